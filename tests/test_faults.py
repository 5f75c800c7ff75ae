"""Fault injection: training killed at random moments, a tracking server that goes away, a disk that fills up.
Each fault ends with a clear error (or a clean resume) and no file a user already had is lost or half-written."""

import copy
import json
import random
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import mlflow
import pytest
import torch

from dcgan.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from dcgan.classifier import train_classifier
from dcgan.config import Params, Paths
from dcgan.data import prepare
from dcgan.errors import DiskError, TrackingError
from dcgan.tracking import tracking_uri
from dcgan.train import train

from .conftest import BIN, TINY, Processes, free_port, user_env, wait_until, write_params


@pytest.fixture
def prepared(project: Paths, tiny: Params) -> Paths:
    prepare(tiny, project)
    train_classifier(tiny, project)
    return project


def _long_run(root: Path, epochs: int = 12, checkpoint_every: int = 1, fid_every: int = 1) -> Params:
    """params.yaml of the tiny model trained long enough to be interrupted (8 steps an epoch)."""
    tree = copy.deepcopy(TINY)
    tree["train"].update(epochs=epochs, checkpoint_every=checkpoint_every)
    tree["evaluate"].update(every_epochs=fid_every)
    return write_params(root, tree)


def _train_command(root: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "dcgan"), "train", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _checkpointed_step(path: Path) -> int:
    return load_checkpoint(path)["step"] if path.exists() else 0


def _wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _checkpointed_step(path) < step:
        assert proc.poll() is None, f"training ended before step {step}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no checkpoint of step {step} after {timeout} s"
        time.sleep(0.01)


def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(prepared: Paths, tmp_path: Path):
    params = _long_run(prepared.root)
    reference = Paths(tmp_path / "reference")
    shutil.copytree(prepared.root, reference.root)
    uninterrupted = subprocess.run(
        [str(BIN / "dcgan"), "train"], cwd=reference.root, env=user_env(), capture_output=True
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    last = checkpoint_path(params, prepared)
    rng = random.Random(0)
    for _ in range(5):
        before = _checkpointed_step(last)
        proc = _train_command(prepared.root, user_env())
        _wait_for_step(last, before + rng.randint(1, 12), proc)
        time.sleep(rng.uniform(0, 0.05))  # anywhere: mid-step, mid-write, mid-log, mid-epoch
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        if before:
            assert f"resuming at step {before} of 96" in err
        assert _checkpointed_step(last) > before  # never half-written: it loads, and it moved on

    finished = subprocess.run([str(BIN / "dcgan"), "train"], cwd=prepared.root, env=user_env(), capture_output=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    for name in ("models/generator.safetensors", "models/discriminator.safetensors", "reports/losses.csv"):
        assert (prepared.root / name).read_bytes() == (reference.root / name).read_bytes(), name
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # no leftovers of the killed writes


def test_a_run_left_running_by_a_killed_process_is_ended_by_the_next_training(prepared: Paths):
    _long_run(prepared.root)
    proc = _train_command(prepared.root, user_env())
    deadline = time.monotonic() + 120
    while not prepared.mlflow_run.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no MLflow run recorded after 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed = json.loads(prepared.mlflow_run.read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri(prepared))
    assert client.get_run(killed).info.status == "RUNNING"  # nothing in a SIGKILLed process could end it

    # Other settings, so a new run rather than a resume of the killed one.
    other = subprocess.run(
        [str(BIN / "dcgan"), "train", "-S", "seed=1", "-S", "train.epochs=1"],
        cwd=prepared.root, env=user_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr[-2000:]
    assert f"was left RUNNING by process {proc.pid}, which is gone: marked KILLED" in other.stderr
    run = client.get_run(killed)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"].startswith(f"its training process ({proc.pid} on ")
    new_run = json.loads(prepared.mlflow_run.read_text())["run_id"]
    assert client.get_run(new_run).info.status == "FINISHED"


def test_an_unreachable_tracking_server_is_a_clear_error_at_start(
    prepared: Paths, tiny: Params, monkeypatch: pytest.MonkeyPatch
):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    with pytest.raises(TrackingError, match=f"the MLflow tracking server {uri} did not answer"):
        train(tiny, prepared)
    assert not prepared.checkpoints.exists()


def _mlflow_server(processes: Processes, root: Path, port: int) -> None:
    command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "server-artifacts")]  # fmt: skip
    processes.start(f"mlflow-{len(processes.started)}", command, root, user_env())
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, "mlflow server", processes)


def test_a_tracking_server_that_stops_mid_run_fails_clearly_and_keeps_the_checkpoint(
    prepared: Paths, tmp_path: Path, processes: Processes
):
    params = _long_run(prepared.root, epochs=40, checkpoint_every=5, fid_every=0)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    _mlflow_server(processes, tmp_path, port)
    # MLflow's own retries with backoff, shortened: 2 retries, 1 s then 2 s.
    env = user_env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    last = checkpoint_path(params, prepared)

    proc = _train_command(prepared.root, env)
    _wait_for_step(last, 10, proc)
    processes.stop_all()  # the server goes away mid-run
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 1
    assert f"error: the MLflow tracking server {uri} did not answer" in err
    stopped_at = _checkpointed_step(last)
    assert 10 <= stopped_at < 320  # intact, and short of the end

    # The server is back: the next run resumes into the same MLflow run (and, to keep the test short, ends
    # with the epoch it is in: more or fewer epochs continue a checkpoint).
    _mlflow_server(processes, tmp_path, port)
    epochs = stopped_at // 8 + 1
    proc = _train_command(prepared.root, env, "-S", f"train.epochs={epochs}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert f"resuming at step {stopped_at} of {8 * epochs}" in err
    run = mlflow.MlflowClient(uri).get_run(load_checkpoint(last)["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_id in out


@contextmanager
def file_size_limit(n_bytes: int) -> Iterator[None]:
    """Writes past n_bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(prepared: Paths, tiny: Params):
    train(tiny, prepared)
    last = checkpoint_path(tiny, prepared)
    good = last.read_bytes()
    state = load_checkpoint(last)
    state["history"] = torch.cat([state["history"]] * 4)  # a bigger checkpoint than the one on disk

    with file_size_limit(len(good)), pytest.raises(DiskError, match="last.pt: could not write it .*previous file"):
        save_checkpoint(last, state)
    assert last.read_bytes() == good
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]
