"""`python -m flows.serve` (what `make serve` calls): serve the `train-dcgan` flow as the deployment `train-dcgan`,
and the `sweep-dcgan` flow as `sweep-dcgan`.

Needs a Prefect API (`make prefect-server`, then PREFECT_API_URL); waits for it while it starts. Trigger a run with
`prefect deployment run train-dcgan/train-dcgan`. One run at a time: the runs share the workspace and DVC's lock.
"""

from __future__ import annotations

import sys
import time
from typing import cast

import httpx
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.settings import PREFECT_API_URL

from flows import SERVER_STARTUP_S
from flows.sweep_dcgan import sweep_dcgan
from flows.train_dcgan import train_dcgan


def wait_for_server(api_url: str, timeout_s: float = SERVER_STARTUP_S) -> str | None:
    """None once a Prefect server answers at `api_url`; else why not, in words, after `timeout_s`."""
    print(f"Waiting for the Prefect server at {api_url} (up to {timeout_s:.0f} s) ...", flush=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.get(f"{api_url}/health", timeout=10)
        except httpx.HTTPError as err:  # not up yet: a new server answers once its database is made
            if time.monotonic() > deadline:
                return f"no Prefect server answered at {api_url} within {timeout_s:.0f} s ({err})"
            time.sleep(1)
            continue
        if response.status_code != 200:
            return f"{api_url}/health answered HTTP {response.status_code}: not a Prefect server"
        return None


def main() -> int:
    api_url = PREFECT_API_URL.value()
    if not api_url:
        print("error: PREFECT_API_URL is not set: start `make prefect-server`, then `make serve`", file=sys.stderr)
        return 1
    problem = wait_for_server(api_url)
    if problem:
        print(
            f"error: {problem}: start it with `make prefect-server` (PREFECT_PORT to choose the port)", file=sys.stderr
        )
        return 1
    deployments = [train_dcgan.to_deployment(name="train-dcgan"), sweep_dcgan.to_deployment(name="sweep-dcgan")]
    serve(*cast(list[RunnerDeployment], deployments), limit=1)  # called outside an event loop: not coroutines
    return 0


if __name__ == "__main__":
    sys.exit(main())
