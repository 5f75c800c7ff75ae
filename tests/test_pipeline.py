"""The DVC pipeline end to end: real `dvc repro` and `dvc exp run` in a temporary git repository."""

import json
import subprocess
import time
from pathlib import Path

import mlflow
import yaml

from dcgan.config import Paths

from .conftest import run_cmd, user_env


def test_dvc_repro_runs_the_pipeline_then_nothing(repo: Path):
    first = subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # A second `dvc repro` in the same workspace while the first runs: DVC's lock refuses it.
    while not (repo / "data" / "prepared").exists() and first.poll() is None:
        time.sleep(0.2)
    second = subprocess.run(["dvc", "repro"], cwd=repo, env=user_env(), capture_output=True, text=True, timeout=120)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    assert second.returncode != 0, second.stdout
    assert "is busy, it is being blocked by" in second.stderr and f"(PID {first.pid})" in second.stderr

    paths = Paths(repo)
    assert (paths.models / "generator.onnx").is_file()
    assert (paths.reports / "samples.png").is_file()
    metrics = json.loads((paths.reports / "metrics.json").read_text())
    names = ["fid", "kid", "inception_score", "precision", "recall", "digits_covered", "class_kl", "confidence"]
    assert set(metrics) == {*names, *(f"real_{n}" for n in names), "classifier_accuracy"}
    for picture in ("samples", "digits", "interpolation", "class_histogram"):
        assert (paths.reports / f"{picture}.png").is_file()
    parity = json.loads((paths.reports / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_error"] <= 1e-5 and parity["provider"] == "CPUExecutionProvider"

    # All stages logged into one MLflow run, in the SQLite store at the repo's root.
    run_id = json.loads(paths.mlflow_run.read_text())["run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)
    assert {"loss_d", "fid_quick", "eval_fid", "parity_max_abs_error"} <= set(run.data.metrics)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert run.data.tags["data.prepared.dvc_md5"] == lock["stages"]["prepare"]["outs"][0]["md5"]
    raw = yaml.safe_load((repo / "data" / "raw" / "mnist.dvc").read_text())
    assert run.data.tags["data.raw.dvc_md5"] == raw["outs"][0]["md5"]

    second = run_cmd(repo, "dvc", "repro")
    assert "Data and pipelines are up to date." in second.stdout


def test_dvc_exp_run_with_a_param_override(repo: Path):
    run_cmd(repo, "dvc", "exp", "run", "-S", "train.epochs=1")
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 1
    shown = json.loads(run_cmd(repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "inception_score" in text and "parity.json" in text
    lines = (Paths(repo).reports / "losses.csv").read_text().splitlines()
    assert len(lines) == 1 + 256 // 32  # one epoch of steps
