"""The DVC pipeline end to end: real `dvc repro` and `dvc exp run` in a temporary git repository."""

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import yaml

from dcgan.config import Paths, load_params
from dcgan.data import fetch
from dcgan.data.idx import FASHION_MNIST

from .conftest import FIXTURE_DIR, run_cmd, user_env


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

    # The prepared data is on disk once: each file a read-only link to its copy in the DVC cache.
    for prepared in paths.prepared.iterdir():
        stat = prepared.stat()
        assert stat.st_nlink == 2 and not stat.st_mode & 0o222, prepared
        assert any(c.stat().st_ino == stat.st_ino for c in (repo / ".dvc" / "cache").rglob("*") if c.is_file())


def test_switching_the_data_set_reruns_every_stage_into_its_own_experiment_and_model(repo: Path, tmp_path: Path):
    run_cmd(repo, "dvc", "repro")
    folder = tmp_path / "published"
    folder.mkdir()
    for name in (f.name for f in FASHION_MNIST.files):
        shutil.copy(FIXTURE_DIR / name, folder / name)  # MNIST's bytes in Fashion-MNIST's published files
    digests = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    fetch(
        load_params(repo / "params.yaml", {"data.dataset": "fashion-mnist", "data.source_dir": str(folder)}),
        Paths(repo),
        digests,
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["dataset"] = "fashion-mnist"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    status = run_cmd(repo, "dvc", "status", "--json").stdout
    assert set(json.loads(status)) == {"prepare"}  # what reads data.dataset; the rest follows its output
    out = run_cmd(repo, "dvc", "repro").stdout
    assert [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")] == [
        "prepare",
        "classifier",
        "train",
        "evaluate",
        "export",
    ]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["prepare"]["deps"][0]["path"] == "data/raw/fashion-mnist"
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    fashion_champion = client.get_model_version_by_alias("dcgan-generator-fashion-mnist", "champion")
    mnist_champion = client.get_model_version_by_alias("dcgan-generator", "champion")
    assert str(fashion_champion.version) == str(mnist_champion.version) == "1"  # neither replaced the other
    experiment_id = client.get_run(fashion_champion.run_id).info.experiment_id
    assert client.get_experiment(experiment_id).name == "dcgan-fashion-mnist"
    assert "Data and pipelines are up to date." in run_cmd(repo, "dvc", "repro").stdout

    params["data"]["train_limit"] = 128  # read when training loads the data: no new prepared copy
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(run_cmd(repo, "dvc", "status", "--json").stdout)) == {"train"}


def test_dvc_exp_run_with_a_param_override(repo: Path):
    run_cmd(repo, "dvc", "exp", "run", "-S", "train.epochs=1")
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 1
    shown = json.loads(run_cmd(repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "inception_score" in text and "parity.json" in text
    lines = (Paths(repo).reports / "losses.csv").read_text().splitlines()
    assert len(lines) == 1 + 256 // 32  # one epoch of steps
