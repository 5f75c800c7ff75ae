"""`dcgan sweep` as a user runs it, in a real git + DVC repository: members through DVC's experiment queue,
their MLflow runs nested under one parent that compares them, and bad grids refused before anything runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pytest

from .conftest import BIN, user_env


def _sweep(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dcgan"), "sweep", *args], cwd=repo, env=user_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_a_sweep_runs_every_member_in_dvcs_queue_nested_under_one_mlflow_run(repo: Path):
    result = _sweep(repo, "--grid", "train.lr=[0.0002, 0.0004]", "--seeds", "0,1", "--jobs", "2", "--name", "lr")
    assert result.returncode == 0, result.stderr[-5000:]
    assert json.loads(result.stdout)["succeeded"] == 4

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")  # the project's store, not the temporary copies'
    experiment = client.get_experiment_by_name("dcgan-mnist").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`sweep.role` = 'parent'")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep"] == "lr"
    assert json.loads(parent.data.params["grid"]) == {"train.lr": [0.0002, 0.0004]}
    assert parent.data.metrics["members_succeeded"] == 4 and parent.data.metrics["members_failed"] == 0
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    overrides = {r.data.tags["sweep.member"]: json.loads(r.data.tags["sweep.overrides"]) for r in children}
    assert overrides == {
        "lr-1": {"seed": 0, "train.lr": 0.0002},
        "lr-2": {"seed": 1, "train.lr": 0.0002},
        "lr-3": {"seed": 0, "train.lr": 0.0004},
        "lr-4": {"seed": 1, "train.lr": 0.0004},
    }
    assert all(r.info.run_name == r.data.tags["sweep.member"] and "eval_fid" in r.data.metrics for r in children)
    assert len({r.data.metrics["eval_fid"] for r in children}) == 4  # four different generators
    assert parent.data.metrics["best_fid"] == min(r.data.metrics["eval_fid"] for r in children)

    # The comparison on the parent run: each member, then mean and spread over the two seeds per grid point.
    comparison = Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="sweep/comparison.md", tracking_uri=client.tracking_uri,
    )).read_text()  # fmt: skip
    lr1 = next(r for r in children if r.data.tags["sweep.member"] == "lr-1")
    assert f"| lr-1 | train.lr=0.0002, seed=0 | success | {lr1.data.metrics['eval_fid']:.4g} |" in comparison
    fids = sorted(r.data.metrics["eval_fid"] for r in children if r.data.tags["sweep.member"] in ("lr-1", "lr-2"))
    mean = sum(fids) / 2
    assert any(line.startswith(f"| train.lr=0.0002 | 2 of 2 | {mean:.4g} ± ") for line in comparison.splitlines())
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {
        "sweep/comparison.md", "sweep/fid_quick.png", "sweep/members.json"
    }  # fmt: skip

    # DVC lists the same members as experiments, with their params.
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=user_env(),
                                      capture_output=True, text=True, check=True).stdout)  # fmt: skip
    experiments = {e["name"]: e for baseline in shown for e in baseline.get("experiments") or []}
    assert {"lr-1", "lr-2", "lr-3", "lr-4"} <= set(experiments)
    member = experiments["lr-3"]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert member["train"]["lr"] == 0.0004 and member["seed"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "train.lrr=[0.1]"], "train.lrr: unknown key"),
        (["--grid", "train.epochs=[1, 0]"], "train.epochs: Input should be greater than or equal to 1 (got 0)"),
        (["--grid", "train.lr=[]"], "--grid train.lr: expected a non-empty YAML list of values"),
        (["--grid", "train.lr=0.1"], "--grid train.lr: expected a non-empty YAML list of values"),
        (["--grid", "seed=[1, 2]"], "--grid seed: not a grid key: give seeds with --seeds"),
        (["--seeds", ""], "--seeds: empty: expected at least one seed"),
        (["--seeds", "1,two"], "--seeds 1,two: expected whole numbers separated by commas"),
    ],
)
def test_a_bad_grid_fails_before_anything_runs(repo: Path, args: list[str], message: str):
    result = _sweep(repo, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (repo / "mlflow.db").exists()  # no parent run
    status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert "Queued" not in status.stdout and "Running" not in status.stdout
