"""`python -m flows.serve`: serve the `train-dcgan` flow as the deployment `train-dcgan`.

Needs a Prefect API (`make prefect-server`, then PREFECT_API_URL). Trigger a run with
`prefect deployment run train-dcgan/train-dcgan`. One run at a time: the runs share the workspace and DVC's lock.
"""

from flows.train_dcgan import train_dcgan

if __name__ == "__main__":
    train_dcgan.serve(name="train-dcgan", limit=1)
