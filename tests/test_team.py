"""Team mode end to end, on real servers: PostgreSQL, the MLflow server with basic auth and proxied artifacts,
the Prefect server, a process work pool with a worker, a git remote and a DVC remote (`dcgan team up`).

The stack is started once for this module (`dcgan team up`, as a user types it) and stopped at the end with
`dcgan team down`; nothing of it may be left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from dcgan.classifier import train_classifier
from dcgan.config import Params, Paths
from dcgan.data import prepare
from dcgan.errors import AuthError
from dcgan.team.stack import load
from flows.train_dcgan import is_transient
from tests.conftest import REPO, Processes, descendants, free_port, run_cmd, user_env


@dataclass
class Team:
    dir: Path
    mlflow_url: str
    prefect_api_url: str
    admin_password: str
    git_remote: Path
    dvc_remote: Path

    def client_env(self, user: str = "admin", password: str | None = None, **extra: str) -> dict[str, str]:
        return user_env(
            MLFLOW_TRACKING_URI=self.mlflow_url,
            MLFLOW_TRACKING_USERNAME=user,
            MLFLOW_TRACKING_PASSWORD=password or self.admin_password,
            PREFECT_API_URL=self.prefect_api_url,
            **extra,
        )


def _our_servers(folder: Path) -> list[str]:
    """Processes whose command line names the stack's folder (PostgreSQL, MLflow, Prefect), as `ps` shows them."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if str(folder) in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    # Outside pytest's temporary folders: those are closed to the postgres user that PostgreSQL runs as.
    base = Path(tempfile.mkdtemp(prefix="dcgan-team-"))
    base.chmod(0o755)
    folder = base / "team"
    ports = [free_port() for _ in range(3)]
    command = ["dcgan", "team", "up", "--dir", str(folder), "--auth", "--postgres-port", str(ports[0])]
    command += ["--mlflow-port", str(ports[1]), "--prefect-port", str(ports[2])]
    try:
        up = subprocess.run(command, env=user_env(), capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, f"dcgan team up failed:\n{up.stdout}\n{up.stderr}"
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{ports[1]}" in up.stdout
        secrets = dict(line.split("=", 1) for line in (folder / "secrets.env").read_text().splitlines()[1:])
        assert (folder / "secrets.env").stat().st_mode & 0o777 == 0o600
        yield Team(
            folder,
            f"http://127.0.0.1:{ports[1]}",
            f"http://127.0.0.1:{ports[2]}/api",
            secrets["MLFLOW_AUTH_ADMIN_PASSWORD"],
            folder / "remotes" / "git",
            folder / "remotes" / "dvc",
        )
    finally:
        down = subprocess.run(["dcgan", "team", "down", "--dir", str(folder)], env=user_env(), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        left = _our_servers(folder)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, f"dcgan team down failed:\n{down.stdout}\n{down.stderr}"
        assert not left, f"still running after `dcgan team down`: {left}"


def test_passwords_stay_out_of_logs_and_state(team: Team) -> None:
    secrets = [line.split("=", 1)[1] for line in (team.dir / "secrets.env").read_text().splitlines()[1:]]
    for path in [team.dir / "state.json", *sorted((team.dir / "logs").glob("*.log"))]:
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], f"{path} holds a password"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [s for s in secrets if s in ps], "a password is in a process's command line"


def _team_repo(repo: Path, team: Team, git_remote: Path) -> None:
    """The project as a team has it: pushed to the git remote, its data on the DVC remote."""
    shutil.copy(REPO / "prefect.yaml", repo)
    run_cmd(repo, "git", "remote", "add", "origin", str(git_remote))
    run_cmd(repo, "dvc", "remote", "add", "-d", "team", str(team.dvc_remote))
    run_cmd(repo, "git", "add", "-A")
    run_cmd(repo, "git", "commit", "-qm", "team remotes, deployments")
    run_cmd(repo, "git", "push", "-q", "origin", "main")
    run_cmd(repo, "dvc", "push", "-q")


def _deploy(team: Team, repo: Path, tmp_path: Path, git_remote: Path) -> dict[str, str]:
    """`prefect deploy --all` from the team's repo; returns the environment of the deploying user's shell."""
    _team_repo(repo, team, git_remote)
    env = team.client_env(DCGAN_GIT_REMOTE=str(git_remote), DCGAN_POOL="dcgan", PREFECT_HOME=str(tmp_path))
    deploy = subprocess.run(["prefect", "--no-prompt", "deploy", "--all"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert deploy.returncode == 0, f"prefect deploy failed:\n{deploy.stdout}\n{deploy.stderr}"
    return env


def _start_worker(folder: Path, env: dict[str, str], processes: Processes, name: str = "worker") -> subprocess.Popen:
    """A worker on a "GPU machine": its own folder (with the `workspace` prefect.yaml names), the venv, the
    servers' URLs and its MLflow account; one flow run at a time."""
    (folder / "workspace").mkdir(parents=True, exist_ok=True)
    command = ["prefect", "worker", "start", "--pool", "dcgan", "--type", "process", "--limit", "1"]
    return processes.start(name, command, folder, env)


def test_worker_runs_the_deployment_and_shares_its_files(
    team: Team, repo: Path, tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _deploy(team, repo, tmp_path, team.git_remote)
    _start_worker(tmp_path / "worker", env, processes)
    overrides = json.dumps({"train.epochs": 1})
    started = subprocess.run(
        ["prefect", "deployment", "run", "train-dcgan/train-dcgan", "--param", f"overrides={overrides}",
         "--watch", "--watch-timeout", "900"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=960,
    )  # fmt: skip
    assert started.returncode == 0, f"the flow run failed:\n{started.stdout}\n{started.stderr}\n{processes.tail()}"
    assert "Completed" in started.stdout

    # Read back through the server by a client that has no access to the artifact folder.
    client = _client(team, monkeypatch)
    (run,) = client.search_runs([client.get_experiment_by_name("dcgan-mnist").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert run.data.params["train.epochs"] == "1"
    pictures = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"samples.png", "digits.png"} <= pictures
    champion = client.get_model_version_by_alias("dcgan-generator", "champion")
    assert champion.run_id == run.info.run_id
    downloads = tmp_path / "downloads"
    weights = Path(client.download_artifacts(run.info.run_id, "weights/generator.safetensors", str(downloads)))
    onnx_model = Path(mlflow.artifacts.download_artifacts(f"models:/dcgan-generator/{champion.version}",
                                                          dst_path=str(downloads / "model")))  # fmt: skip

    # A teammate's fresh clone gets the run's exact files from the remotes.
    experiment = run.data.tags["dvc.experiment"]
    assert experiment == f"mlflow-{run.info.run_id}"
    clone = tmp_path / "teammate"
    plain = user_env()
    subprocess.run(["git", "clone", "-q", str(team.git_remote), str(clone)], env=plain, check=True)
    for command in (["dvc", "exp", "pull", "origin", experiment], ["dvc", "exp", "apply", experiment], ["dvc", "pull"]):
        run_cmd(clone, *command)
    assert (clone / "models" / "generator.safetensors").read_bytes() == weights.read_bytes()
    assert (clone / "models" / "generator.onnx").read_bytes() == (onnx_model / "model.onnx").read_bytes()
    assert "epochs: 1" in (clone / "params.yaml").read_text()


def _client(
    team: Team, monkeypatch: pytest.MonkeyPatch, user: str = "admin", password: str | None = None
) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password or team.admin_password)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.mlflow_url)
    # The global one too (and so the registry's): earlier tests in this process pointed it at their own stores.
    mlflow.set_tracking_uri(team.mlflow_url)
    return MlflowClient(team.mlflow_url)


class _Failed:
    """A task run's state whose result raises `error`, as Prefect hands it to a retry condition."""

    def __init__(self, error: Exception):
        self.error = error

    def result(self) -> None:
        raise self.error


def _train(team: Team, project: Path, user: str, password: str, *overrides: str) -> subprocess.CompletedProcess:
    """`dcgan train` in `project` as an MLflow user of the team server."""
    args = ["dcgan", "train", *[f"-S{o}" for o in overrides]]
    env = user_env(
        MLFLOW_TRACKING_URI=team.mlflow_url, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password
    )
    return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def prepared(project: Paths, tiny: Params) -> Path:
    prepare(tiny, project)
    train_classifier(tiny, project)
    return project.root


def test_a_wrong_password_is_an_auth_error_never_retried(team: Team, prepared: Path) -> None:
    started = time.monotonic()
    result = _train(team, prepared, "admin", "not-the-password")
    assert result.returncode == 1
    assert "rejected the credentials (HTTP 401" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # no retries with backoff
    assert not is_transient(None, None, _Failed(AuthError("401")))  # and the flow's tasks do not retry it


def test_a_user_without_permission_gets_a_403_named_as_such(
    team: Team, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = _client(team, monkeypatch)  # as the admin: the experiment exists, and a user who may only read it
    if admin.get_experiment_by_name("dcgan-mnist") is None:
        admin.create_experiment("dcgan-mnist")
    auth = get_app_client("basic-auth", tracking_uri=team.mlflow_url)
    auth.create_user("reader", "reader-password-1")
    result = _train(team, prepared, "reader", "reader-password-1")
    assert result.returncode == 1
    assert "refused user reader permission (HTTP 403" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_postgresql_restart_mid_run_is_survived(team: Team, prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = load(team.dir)
    env = team.client_env()
    proc = subprocess.Popen(["dcgan", "train", "-Strain.epochs=20"], cwd=prepared, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        checkpoints = Paths(prepared).checkpoints
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("*/last.pt")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, "training ended before PostgreSQL could be restarted"
        stack.cluster.restart()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads((Paths(prepared).reports / "train.json").read_text())
    client = _client(team, monkeypatch)
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert len(client.get_metric_history(result["run_id"], "loss_d")) == result["steps"] == 160
    # The Prefect server answers again too.
    pools = subprocess.run(["prefect", "work-pool", "ls"], env=env, capture_output=True, text=True, timeout=120)
    assert pools.returncode == 0 and "dcgan" in pools.stdout, pools.stdout + pools.stderr


def _flow_run_state(team: Team, flow_run_id: str) -> str:
    return httpx.get(f"{team.prefect_api_url}/flow_runs/{flow_run_id}", timeout=30).json()["state"]["type"]


def test_a_killed_worker_leaves_a_crashed_run_and_the_next_run_resumes(
    team: Team, repo: Path, tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_remote = tmp_path / "another-project.git"  # not the stack's remote, which the other test's project holds
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(git_remote)], check=True)
    env = _deploy(team, repo, tmp_path, git_remote)
    machine = tmp_path / "gpu-machine"
    worker = _start_worker(machine, env, processes)
    run = ["prefect", "deployment", "run", "train-dcgan/train-dcgan", "--param", 'overrides={"train.epochs": 20}']
    started = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)  # type: ignore[union-attr]

    # The machine goes away mid-training: the worker and the flow run's processes, all at once.
    checkpoints = machine / "workspace" / "dcgan" / "models" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("*/last.pt")) and time.monotonic() < deadline:
        assert worker.poll() is None, processes.tail()
        time.sleep(0.5)
    for pid in [worker.pid, *descendants(worker.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.wait()

    # No heartbeat: Prefect marks the run Crashed (dcgan/team/automations.yaml).
    deadline = time.monotonic() + 300
    while _flow_run_state(team, flow_run_id) != "CRASHED" and time.monotonic() < deadline:
        time.sleep(2)
    assert _flow_run_state(team, flow_run_id) == "CRASHED"

    # The machine is back; the next run of the deployment resumes from the checkpoint left in its workspace.
    _start_worker(machine, env, processes, name="worker-again")
    again = subprocess.run([*run, "--watch", "--watch-timeout", "900"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=960)  # fmt: skip
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}\n{processes.tail()}"
    result = json.loads((machine / "workspace" / "dcgan" / "reports" / "train.json").read_text())
    assert result["resumed_from"] > 0 and result["steps"] == 20 * 8
    # Into the MLflow run the checkpoint names: it holds the steps from before the crash and after it.
    client = _client(team, monkeypatch)
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(result["run_id"], "loss_d")}) == list(range(1, 161))
