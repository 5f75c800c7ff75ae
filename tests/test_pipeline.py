"""The DVC pipeline end to end: real `dvc repro` and `dvc exp run` in a temporary git repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from dcgan.config import Paths, load_params
from dcgan.data import fetch

from .conftest import FIXTURE_DIR, FIXTURE_SHA256, REPO, TINY

BIN = Path(sys.executable).parent


def _run(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DCGAN_MNIST_DIR")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1")
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project's pipeline, tiny params and the fixture data, committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo)
    shutil.copytree(REPO / "dcgan", repo / "dcgan", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    shutil.copy(REPO / ".gitignore", repo)
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, "git", "config", "user.email", "test@example.com")
    _run(repo, "git", "config", "user.name", "test")
    _run(repo, "dvc", "init", "-q")
    _run(repo, "dvc", "config", "core.check_update", "false")
    fetch(load_params(repo / "params.yaml", {"data.source_dir": str(FIXTURE_DIR)}), Paths(repo), FIXTURE_SHA256)
    _run(repo, "dvc", "add", "-q", "data/raw/mnist")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "pipeline")
    return repo


def test_dvc_repro_runs_the_pipeline_then_nothing(repo: Path):
    _run(repo, "dvc", "repro")

    paths = Paths(repo)
    assert (paths.models / "generator.onnx").is_file()
    assert (paths.reports / "samples.png").is_file()
    metrics = json.loads((paths.reports / "metrics.json").read_text())
    assert set(metrics) == {"final_loss_d", "final_loss_g", "final_d_real", "final_d_fake"}
    parity = json.loads((paths.reports / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_error"] <= 1e-5 and parity["provider"] == "CPUExecutionProvider"

    # All stages logged into one MLflow run, in the SQLite store at the repo's root.
    run_id = json.loads(paths.mlflow_run.read_text())["run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)
    assert {"loss_d", "final_loss_d", "parity_max_abs_error"} <= set(run.data.metrics)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert run.data.tags["data.prepared.dvc_md5"] == lock["stages"]["prepare"]["outs"][0]["md5"]
    raw = yaml.safe_load((repo / "data" / "raw" / "mnist.dvc").read_text())
    assert run.data.tags["data.raw.dvc_md5"] == raw["outs"][0]["md5"]

    second = _run(repo, "dvc", "repro")
    assert "Data and pipelines are up to date." in second.stdout


def test_dvc_exp_run_with_a_param_override(repo: Path):
    _run(repo, "dvc", "exp", "run", "-S", "train.epochs=1")
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 1
    shown = json.loads(_run(repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "final_loss_d" in text and "parity.json" in text
    lines = (Paths(repo).reports / "losses.csv").read_text().splitlines()
    assert len(lines) == 1 + 256 // 32  # one epoch of steps
