"""The `train-dcgan` flow under Prefect's test harness: tiny params, a temporary project, the real stages."""

import dataclasses
import hashlib
import json

import mlflow
import pytest
import yaml

from .conftest import FIXTURE_DIR, run_cmd


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory):
    """One temporary Prefect server for the module, its state in a temp dir."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect")))
        env.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield


def test_flow_runs_the_pipeline_once_per_mlflow_run(repo, prefect_home, monkeypatch: pytest.MonkeyPatch):
    from flows.train_dcgan import train_dcgan

    monkeypatch.chdir(repo)
    summary = train_dcgan(overrides={"train.epochs": 1})

    assert summary["steps"] == 256 // 32 and summary["model_uri"] == "models:/dcgan-generator/1"
    assert summary["prepare"] == summary["classifier"] == "ran and recorded in dvc.lock"
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["train.epochs"] == "1"  # the effective value, not params.yaml's 2
    assert run.data.tags["prefect.flow_run_id"]
    assert {"loss_d", "fid_quick", "eval_fid", "parity_max_abs_error"} <= set(run.data.metrics)
    assert client.get_model_version("dcgan-generator", "1").run_id == run.info.run_id

    # A second run: DVC finds the prepared data up to date.
    again = train_dcgan(overrides={"train.epochs": 1})
    assert again["prepare"] == again["classifier"] == "up to date: DVC found nothing changed since dvc.lock"
    assert again["mlflow_run_id"] != summary["mlflow_run_id"]
    assert json.loads((repo / "reports" / "parity.json").read_text())["passed"]


def test_the_flow_on_another_data_set_versions_its_files_and_registers_its_own_model(
    repo, prefect_home, monkeypatch: pytest.MonkeyPatch
):
    """`make run OVERRIDES="data.dataset=kmnist ..."`: fetched for the first time, the files are put under DVC."""
    from dcgan.data.datasets import DATASETS
    from dcgan.data.idx import KMNIST
    from dcgan.data.published import with_digests
    from flows.train_dcgan import train_dcgan

    gz = {f.name: hashlib.md5((FIXTURE_DIR / f.name).read_bytes()).hexdigest() for f in KMNIST.files}
    monkeypatch.setitem(DATASETS, "kmnist", dataclasses.replace(KMNIST, files=tuple(with_digests(KMNIST.files, gz))))
    monkeypatch.chdir(repo)
    summary = train_dcgan(overrides={"data.dataset": "kmnist", "data.source_dir": str(FIXTURE_DIR), "train.epochs": 1})

    assert (
        summary["fetch"] == f"fetched from folder {FIXTURE_DIR}; versioned by data/raw/kmnist.dvc (commit it with git)"
    )
    assert yaml.safe_load((repo / "data" / "raw" / "kmnist.dvc").read_text())["outs"][0]["path"] == "kmnist"
    assert summary["model_uri"] == "models:/dcgan-generator-kmnist/1"
    again = train_dcgan(overrides={"data.dataset": "kmnist", "train.epochs": 1})  # no source needed any more
    assert again["fetch"] == "up to date: data/raw/kmnist matches kmnist.dvc"


def test_bad_params_fail_the_flow_before_any_task(repo, prefect_home, monkeypatch: pytest.MonkeyPatch):
    from dcgan.errors import ParamsError
    from flows.train_dcgan import train_dcgan

    monkeypatch.chdir(repo)
    with pytest.raises(ParamsError, match="train.lr: Input should be greater than 0"):
        train_dcgan(overrides={"train.lr": 0})
    assert not (repo / "data" / "prepared").exists()


def test_flow_and_dvc_repro_give_identical_weights(repo, prefect_home, monkeypatch: pytest.MonkeyPatch):
    """One implementation: the same params through the flow and through `dvc repro`, the same generator."""
    from flows.train_dcgan import train_dcgan

    monkeypatch.chdir(repo)
    train_dcgan()
    generator = repo / "models" / "generator.safetensors"
    from_flow = generator.read_bytes()
    repro = run_cmd(repo, "dvc", "repro")
    assert "Running stage 'train'" in repro.stdout  # dvc.lock had no train record: DVC trained again
    assert generator.read_bytes() == from_flow


def test_a_failing_stage_fails_the_flow_run_readably(repo, prefect_home, monkeypatch: pytest.MonkeyPatch):
    """Raw data that no longer matches data/raw/mnist.dvc is fetched again; files that are not the official
    MNIST (here the test fixture) fail the fetch with no retry, and the flow run with a readable message."""
    from flows.train_dcgan import train_dcgan

    (repo / "data" / "raw" / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DCGAN_MNIST_DIR", str(FIXTURE_DIR))

    state = train_dcgan(return_state=True)
    assert state.is_failed()
    assert "DataError: train-images-idx3-ubyte: SHA-256 mismatch: expected ba891046" in state.message


def test_an_unreachable_tracking_server_fails_the_flow_run_readably(
    repo, prefect_home, monkeypatch: pytest.MonkeyPatch
):
    import flows.train_dcgan
    from flows.train_dcgan import train_dcgan

    from .conftest import free_port

    monkeypatch.chdir(repo)
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # Transient: retried (3 times), here without the backoff's waits.
    monkeypatch.setattr(flows.train_dcgan.train_model, "retry_delay_seconds", [0, 0, 0])

    state = train_dcgan(return_state=True)
    assert state.is_failed()
    assert f"TrackingError: the MLflow tracking server {uri} did not answer" in state.message
