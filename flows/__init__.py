"""Prefect front doors to the pipeline: the `train-dcgan` flow, `make run` (flows.run), `make serve` (flows.serve)."""

# How long our entry points wait for a Prefect server to answer. A new server first creates its database:
# 18-24 s measured on a busy AVX2 machine, where Prefect's default wait of 20 s failed.
SERVER_STARTUP_S = 300
