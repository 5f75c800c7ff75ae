"""The `sweep-dcgan` flow: dcgan/sweep.py's three steps as Prefect tasks, the comparison as a markdown artifact.

Wiring only: DVC's queue runs the members (each in its own temporary workspace), MLflow nests their runs under
the sweep's parent run. Served beside train-dcgan by `make serve`:

    prefect deployment run sweep-dcgan/sweep-dcgan -p grid='{"train.ema_decay": [null, 0.99]}' -p seeds='[0, 1, 2]'
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from dcgan.config import PARAMS_FILE
from dcgan.sweep import Sweep, SweepResult, finish_sweep, start_sweep, wait_for_members
from flows.train_dcgan import PATHS


@task
def queue_members(grid: dict[str, list[Any]], seeds: list[int], jobs: int, name: str | None) -> Sweep:
    """Validate the grid (a bad key or value fails here, before anything runs), open the parent run, queue."""
    return start_sweep(PATHS.root / PARAMS_FILE, grid, seeds, jobs, name, PATHS)


@task
def wait(sweep: Sweep) -> dict[str, str]:
    return wait_for_members(sweep, PATHS)


@task
def compare(sweep: Sweep, states: dict[str, str]) -> SweepResult:
    return finish_sweep(sweep, states, PATHS)


@flow(name="sweep-dcgan", log_prints=True)
def sweep_dcgan(
    grid: dict[str, list[Any]], seeds: list[int] | None = None, jobs: int = 1, name: str | None = None
) -> dict[str, Any]:
    """Train and evaluate every member of `grid` (dotted params.yaml keys -> lists of values) times `seeds`
    (default [0]), `jobs` at a time, and compare them in one MLflow parent run."""
    sweep = queue_members(grid, seeds if seeds is not None else [0], jobs, name)
    result = compare(sweep, wait(sweep))
    create_markdown_artifact(result.comparison, key="sweep-dcgan-comparison", description=f"sweep {result.name}")
    return {"name": result.name, "parent_run_id": result.parent_run_id, "succeeded": result.succeeded,
            "failed": result.failed}  # fmt: skip
