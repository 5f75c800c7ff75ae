"""Sweeps: a grid of overrides times a list of seeds, every member trained and evaluated, compared in MLflow.

    dcgan sweep --grid 'train.ema_decay=[null, 0.99]' --grid 'train.lr=[0.0002]' --seeds 0,1,2 --jobs 2

DVC's experiment queue does the fan-out: each member is `dvc exp run --queue -S ... evaluate`, run by
`dvc queue start -j N` in its own temporary workspace (so members never share models/ or DVC's lock), and listed
by `dvc exp show`. In MLflow the sweep is one parent run; each member's run (started by `train` inside the
queue) is its child, tagged with the sweep and its overrides. Once all have ended, the parent gets the
comparison: a table of every member, the mean and spread over seeds per grid point, and quick FID against
steps for every member.

Three steps, so that the CLI and the `sweep-dcgan` flow call the same code: `start_sweep` (validate, open the
parent run, queue, start the workers), `wait_for_members`, `finish_sweep` (compare, close the parent run).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from dcgan import tracking
from dcgan.config import Paths, load_params
from dcgan.errors import DcganError, ParamsError

log = logging.getLogger(__name__)

POLL_S = 5
FIGURES = {  # eval metric -> the column's name
    "fid": "FID",
    "inception_score": "IS",
    "digits_covered": "classes covered",
    "precision": "precision",
    "recall": "recall",
}
NOT_GRIDDED = {"seed": "give seeds with --seeds", "data.dataset": "compare data sets in separate sweeps"}


def describe(overrides: dict[str, Any]) -> str:
    """{"train.lr": 0.0002, "seed": 0} -> 'train.lr=0.0002, seed=0': as a sweep's tables and plots name them."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in overrides.items()) or "(base)"


@dataclass(frozen=True)
class Member:
    name: str  # the DVC experiment: <sweep>-<n>
    overrides: dict[str, Any]  # the grid point's values, and "seed"

    @property
    def point(self) -> str:
        """The grid point, seed left out: what the mean and spread are taken over."""
        return describe({k: v for k, v in self.overrides.items() if k != "seed"})


@dataclass(frozen=True)
class Sweep:
    name: str
    parent_run_id: str
    experiment_id: str
    members: list[Member]


@dataclass(frozen=True)
class Outcome:
    member: Member
    state: str  # "success" or "failed", as DVC's queue ended it
    run: Any  # its MLflow run (mlflow.entities.Run), None when train never started one
    metrics: dict[str, float]  # its evaluation figures (FIGURES)


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run_id: str
    succeeded: int
    failed: int
    comparison: str  # the markdown table logged to the parent run


def plan(params_file: Path, grid: dict[str, Any], seeds: list[int], name: str) -> list[Member]:
    """Every member of the grid times the seeds, each validated as params before anything runs."""
    if not seeds:
        raise ParamsError("--seeds: empty: expected at least one seed, e.g. --seeds 0,1,2")
    for key, values in grid.items():
        if key in NOT_GRIDDED:
            raise ParamsError(f"--grid {key}: not a grid key: {NOT_GRIDDED[key]}")
        if not isinstance(values, list) or not values:
            raise ParamsError(
                f"--grid {key}: expected a non-empty YAML list of values, e.g. {key}=[a, b]; got {values!r}"
            )
    members: list[Member] = []
    for point in itertools.product(*grid.values()):
        for seed in seeds:
            overrides = {**dict(zip(grid, point, strict=True)), "seed": seed}
            load_params(params_file, overrides)  # an unknown key or an impossible value: a ParamsError naming it
            members.append(Member(f"{name}-{len(members) + 1}", overrides))
    return members


def start_sweep(
    params_file: Path, grid: dict[str, Any], seeds: list[int], jobs: int, name: str | None, paths: Paths
) -> Sweep:
    """Validate the grid, open the parent MLflow run, queue every member in DVC and start `jobs` workers."""
    if jobs < 1:
        raise ParamsError(f"--jobs {jobs}: expected at least one worker")
    name = name or time.strftime("sweep-%Y%m%d-%H%M%S")
    members = plan(params_file, grid, seeds, name)
    base = load_params(params_file)
    if not (paths.root / ".dvc").is_dir():
        raise DcganError(f"{paths.root.resolve()}: not a DVC repository: a sweep runs its members in DVC's queue")
    workers = _dvc(paths, "queue", "status").stdout.rsplit("Worker status:", 1)[-1].strip()
    if not workers.startswith("0 active, 0 idle"):
        raise DcganError(f"DVC's queue has workers already ({workers}): wait for them or `dvc queue stop` first")
    taken = set(_dvc(paths, "exp", "list", "--all-commits", "--name-only").stdout.split())
    if clash := sorted(taken & {m.name for m in members}):
        raise DcganError(f"--name {name}: DVC already has experiments {', '.join(clash)}: choose another name")

    # The store exists before the members' processes open it at once (creating a SQLite store twice races).
    experiment_id = tracking.use_experiment(paths, base.data.dataset)
    client = mlflow.MlflowClient()
    tags = {"sweep": name, "sweep.role": "parent", "mlflow.source.name": "dcgan sweep", "mlflow.runName": name}
    parent = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_param(parent, "grid", json.dumps(grid))
    client.log_param(parent, "seeds", json.dumps(seeds))
    client.log_param(parent, "jobs", jobs)
    sweep = Sweep(name, parent, experiment_id, members)
    try:
        for member in members:
            overrides = [f"-S{key}={json.dumps(value)}" for key, value in member.overrides.items()]
            _dvc(paths, "exp", "run", "--queue", "--name", member.name, *overrides, "evaluate")
        # The workers, and so every member's `train`, inherit this: it makes their runs the parent's children.
        env = {tracking.SWEEP_ENV: json.dumps({"parent_run_id": parent, "name": name, "keys": [*grid, "seed"]})}
        _dvc(paths, "queue", "start", "--jobs", str(jobs), env=env)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    log.info("sweep %s: %d members queued, %d workers; MLflow parent run %s", name, len(members), jobs, parent)
    return sweep


def wait_for_members(sweep: Sweep, paths: Paths, timeout_s: float | None = None) -> dict[str, str]:
    """Wait until every member has ended in DVC's queue; returns member -> "success" or "failed"."""
    names = {m.name for m in sweep.members}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        states = {name: state for name, state in _queue_states(paths).items() if name in names}
        ended = {name: state for name, state in states.items() if state in ("success", "failed")}
        if len(ended) == len(names):
            return ended
        if deadline is not None and time.monotonic() > deadline:
            raise DcganError(f"sweep {sweep.name}: members still running after {timeout_s} s: {states}")
        time.sleep(POLL_S)


def finish_sweep(sweep: Sweep, states: dict[str, str], paths: Paths) -> SweepResult:
    """Compare the members in the parent run (table, per-point mean and spread, quick FID plot); close it."""
    tracking.use_store(paths)
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [sweep.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'"
    )
    by_member = {run.data.tags.get("sweep.member"): run for run in runs}
    outcomes = []
    for member in sweep.members:
        run = by_member.get(member.name)
        metrics = {key: run.data.metrics[f"eval_{key}"] for key in FIGURES if run and f"eval_{key}" in run.data.metrics}
        outcomes.append(Outcome(member, states.get(member.name, "?"), run, metrics))
    comparison = _comparison(sweep, outcomes)
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "fid_quick.png"
        _plot_quick_fid(client, outcomes, plot)
        client.log_artifact(sweep.parent_run_id, str(plot), "sweep")
    client.log_text(sweep.parent_run_id, comparison, "sweep/comparison.md")
    members = {
        o.member.name: {"overrides": o.member.overrides, "state": o.state, "run_id": o.run and o.run.info.run_id,
                        **o.metrics}
        for o in outcomes
    }  # fmt: skip
    client.log_dict(sweep.parent_run_id, members, "sweep/members.json")
    succeeded = sum(o.state == "success" for o in outcomes)
    client.log_metric(sweep.parent_run_id, "members_succeeded", succeeded)
    client.log_metric(sweep.parent_run_id, "members_failed", len(outcomes) - succeeded)
    if fids := [o.metrics["fid"] for o in outcomes if "fid" in o.metrics]:
        client.log_metric(sweep.parent_run_id, "best_fid", min(fids))
    client.set_terminated(sweep.parent_run_id, "FINISHED" if succeeded == len(outcomes) else "FAILED")
    return SweepResult(sweep.name, sweep.parent_run_id, succeeded, len(outcomes) - succeeded, comparison)


def run_sweep(
    params_file: Path, grid: dict[str, Any], seeds: list[int], jobs: int, name: str | None, paths: Paths
) -> SweepResult:
    """The three steps in a row: what `dcgan sweep` does."""
    sweep = start_sweep(params_file, grid, seeds, jobs, name, paths)
    return finish_sweep(sweep, wait_for_members(sweep, paths), paths)


def _comparison(sweep: Sweep, outcomes: list[Outcome]) -> str:
    header = "| member | overrides | state | " + " | ".join(FIGURES.values()) + " | MLflow run |"
    lines = [f"# Sweep {sweep.name}", "", header, "|" + " --- |" * (len(FIGURES) + 4)]
    for o in outcomes:
        figures = " | ".join(f"{o.metrics[k]:.4g}" if k in o.metrics else "–" for k in FIGURES)
        state = o.state if o.state == "success" else f"{o.state} (`dvc queue logs {o.member.name}`)"
        overrides = describe(o.member.overrides)
        lines.append(f"| {o.member.name} | {overrides} | {state} | {figures} | {o.run.info.run_id if o.run else '–'} |")
    lines += ["", "Mean ± standard deviation over seeds, per grid point:", ""]
    lines += ["| grid point | seeds | " + " | ".join(FIGURES.values()) + " |", "|" + " --- |" * (len(FIGURES) + 2)]
    points = dict.fromkeys(o.member.point for o in outcomes)
    for point in points:
        group = [o for o in outcomes if o.member.point == point]
        cells = []
        for key in FIGURES:
            values = [o.metrics[key] for o in group if key in o.metrics]
            spread = f" ± {statistics.stdev(values):.3g}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4g}{spread}" if values else "–")
        done = sum("fid" in o.metrics for o in group)
        lines.append(f"| {point} | {done} of {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_quick_fid(client: mlflow.MlflowClient, outcomes: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    points = list(dict.fromkeys(o.member.point for o in outcomes))
    colours = plt.get_cmap("tab10")
    for o in outcomes:
        if o.run is None:
            continue
        history = sorted(client.get_metric_history(o.run.info.run_id, "fid_quick"), key=lambda m: m.step)
        label = f"{o.member.name}: {o.member.point}, seed {o.member.overrides['seed']}"
        colour = colours(points.index(o.member.point) % 10)
        axes.plot([m.step for m in history], [m.value for m in history], marker="o", color=colour, label=label)
    axes.set(xlabel="step", ylabel="quick FID (lower is better)", title="Quick FID of every member")
    axes.legend(fontsize=7)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _queue_states(paths: Paths) -> dict[str, str]:
    """Each queued, running or ended experiment's state, as `dvc exp show --json` reports it."""
    shown = json.loads(_dvc(paths, "exp", "show", "--json", "--all-commits").stdout)
    states = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            if experiment.get("name"):
                states[experiment["name"]] = executor.get("state") or "success"
    return states


def _dvc(paths: Paths, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["dvc", *args], cwd=paths.root, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise DcganError(f"dvc {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result
