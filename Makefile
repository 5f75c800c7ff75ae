# `make run` runs the pipeline (the train-dcgan flow, once, in this process); `make test` runs the tests.
# Both set up .venv first when needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml's commands call `dcgan`, found here.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
# Prefect's state stays in the project; no telemetry from offline machines.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
PREFECT_PORT ?= 4200
# e.g. make run OVERRIDES="train.epochs=1 data.train_limit=12800"
OVERRIDES ?=
# Named overrides, put before OVERRIDES: `make run PRESET=cpu` (README, "Digits on a CPU budget").
PRESET_cpu := data.image_size=32 train.epochs=9 train.lr=0.0004
ifneq ($(PRESET),)
ifeq ($(PRESET_$(PRESET)),)
$(error PRESET=$(PRESET): no such preset (known: cpu))
endif
override OVERRIDES := $(PRESET_$(PRESET)) $(OVERRIDES)
endif
# `make web`: the model the page explores, and where it is served.
WEB_MODEL ?= models:/dcgan-generator@champion
WEB_PORT ?= 8000

.PHONY: setup lock run repro prefect-server serve team-up team-down worker web system-deps test lint audit clean

# The exact versions in requirements.lock, so every machine and every `dvc repro` runs the same stack.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

# After changing pyproject.toml's dependencies: rebuild the venv from scratch, then record what it holds.
lock:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	(echo "# Exact versions of every dependency, installed by \`make setup\` as pip constraints. Refresh: \`make lock\`."; \
	 $(BIN)/python -m pip freeze --exclude-editable) > requirements.lock
	touch $(VENV)/.installed

# The train-dcgan flow, once, in this process: fetch, prepare (DVC decides), train, evaluate, export, register.
run: setup
	$(BIN)/python -m flows.run $(addprefix -S ,$(OVERRIDES))

# The same stages through DVC alone: `dvc repro`, or with OVERRIDES a DVC experiment (`dvc exp run -S ...`).
repro: setup
	dcgan fetch
ifeq ($(strip $(OVERRIDES)),)
	dvc repro
else
	dvc exp run $(addprefix -S ,$(OVERRIDES))
endif

# A local Prefect server on 127.0.0.1 (state in .prefect/); then, in another shell, `make serve`.
prefect-server: setup
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# Serves the train-dcgan deployment against that server: `prefect deployment run train-dcgan/train-dcgan`.
serve: setup
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(BIN)/python -m flows.serve

# Team mode (docs/team.md). On the server machine: PostgreSQL, the MLflow server (TEAM_FLAGS=--auth for users and
# passwords; --host 0.0.0.0 to serve other machines) and the Prefect server with its work pool, in .team/.
TEAM_FLAGS ?=
team-up: setup
	dcgan team up $(TEAM_FLAGS)

team-down: setup
	dcgan team down

# On each GPU machine, with PREFECT_API_URL, MLFLOW_TRACKING_URI and the machine's MLflow account set: a worker
# that runs the pool's flow runs, one at a time, in worker/workspace (kept: a run after a crash resumes there).
POOL ?= dcgan
worker: setup
	mkdir -p worker/workspace
	cd worker && prefect worker start --pool $(POOL) --type process --limit 1

# The champion in the browser: build the page (onnxruntime-web, no server-side inference), serve it on 127.0.0.1.
web: setup
	dcgan web build --model $(WEB_MODEL)
	dcgan web serve --port $(WEB_PORT)

# Debian packages the tests need: chromium, which Playwright drives for the web page's tests, and PostgreSQL,
# which the team-mode tests start a throwaway cluster of.
SYSTEM_PACKAGES := $(if $(shell command -v chromium),,chromium) \
	$(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql)
system-deps:
	@$(if $(strip $(SYSTEM_PACKAGES)), \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  else echo "the tests need Debian packages: sudo apt-get install -y $(SYSTEM_PACKAGES)" >&2; exit 1; fi, true)

# Three pytest-xdist workers, even on 2 cores: the end-to-end tests spend much of their time waiting (servers
# starting, heartbeats, retries); with two workers the suite kept 1.3 of 2 cores busy (docs/benchmarks.md).
test: lint system-deps
	$(BIN)/python -m pytest -n 3 --dist worksteal

lint: setup
	$(BIN)/ruff check dcgan flows tests bench
	$(BIN)/ruff format --check dcgan flows tests bench
	$(BIN)/mypy dcgan flows

# Known vulnerabilities in the installed stack (pip-audit, kept in its own venv; needs PyPI's JSON API).
audit: setup
	test -x .audit/bin/pip-audit || ($(PYTHON) -m venv .audit && .audit/bin/python -m pip install --quiet pip-audit)
	.audit/bin/pip-audit --strict --progress-spinner off --path $(wildcard $(VENV)/lib/python3*/site-packages)

clean:
	rm -rf $(VENV) .audit .pytest_cache .mypy_cache .ruff_cache
