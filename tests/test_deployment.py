"""End to end with real processes on 127.0.0.1: a Prefect server, an MLflow server, the served deployment,
and `prefect deployment run train-dcgan/train-dcgan --watch` as a user types it."""

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest

from .conftest import BIN

STARTUP_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Processes started in their own session, stopped by their pids (the whole group), even on failure."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


def _wait_until(check, what: str, procs: Processes, timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what} not ready after {timeout} s\n{procs.tail()}")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()


def test_deployment_run_trains_tracks_and_registers(repo: Path, tmp_path: Path, processes: Processes):
    prefect_port, mlflow_port = _free_port(), _free_port()
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env['PATH']}",
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=prefect_api,
        MLFLOW_TRACKING_URI=mlflow_uri,
        DVC_NO_ANALYTICS="1",
    )
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    prefect_server = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    processes.start("prefect-server", prefect_server, tmp_path, server_env)
    processes.start("mlflow-server", ["mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                                      "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                                      "--artifacts-destination", str(tmp_path / "mlartifacts")],
                    tmp_path, env)  # fmt: skip
    _wait_until(lambda: httpx.get(f"{prefect_api}/health").status_code == 200, "prefect server", processes)
    _wait_until(lambda: httpx.get(f"{mlflow_uri}/health").status_code == 200, "mlflow server", processes)

    processes.start("serve", [str(BIN / "python"), "-m", "flows.serve"], repo, env)
    deployments = f"{prefect_api}/deployments/filter"
    _wait_until(lambda: httpx.post(deployments, json={}).json(), "deployment train-dcgan", processes)

    overrides = {"overrides": {"train.epochs": 1}}
    run = subprocess.run(
        ["prefect", "deployment", "run", "train-dcgan/train-dcgan", "--params", json.dumps(overrides),
         "--watch", "--watch-timeout", "400"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=460,
    )  # fmt: skip
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{processes.tail()}"

    (flow_run,) = httpx.post(f"{prefect_api}/flow_runs/filter", json={}).json()
    assert flow_run["state"]["type"] == "COMPLETED"

    client = mlflow.MlflowClient(mlflow_uri)  # over HTTP
    (mlflow_run,) = client.search_runs(client.get_experiment_by_name("dcgan-mnist").experiment_id)
    assert mlflow_run.data.tags["prefect.flow_run_id"] == flow_run["id"]
    assert mlflow_run.data.params["train.epochs"] == "1"
    assert {"loss_d", "loss_g", "fid_quick", "eval_fid", "parity_max_abs_error"} <= set(mlflow_run.data.metrics)
    version = client.get_model_version("dcgan-generator", "1")
    assert version.run_id == mlflow_run.info.run_id
    # What the README tells a user to type to download it.
    download = tmp_path / "generator"
    command = ["mlflow", "artifacts", "download", "-u", "models:/dcgan-generator/1", "-d", str(download)]
    fetched = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    assert (download / "model.onnx").is_file()
