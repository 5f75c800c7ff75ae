"""The team servers on one machine: PostgreSQL, the MLflow server (artifacts proxied, basic auth by a flag), the
Prefect server, a process work pool, and a git and a DVC remote. `dcgan team up` / `down` / `env`.

Everything lives in one folder (`.team/`, git-ignored): `state.json` (what runs where), `secrets.env` (mode 600:
the passwords, generated once unless the environment sets them), `pgpass`, `logs/`, the artifacts and the
remotes. The servers bind 127.0.0.1 unless told otherwise; PostgreSQL always does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pydantic import BaseModel

from dcgan.errors import DcganError
from dcgan.team.postgres import Cluster, write_passfile

log = logging.getLogger(__name__)

STARTUP_S = 300  # a new Prefect server first builds its database: 20-60 s on a busy 2-core machine
# Prefect automations created with the pool, once: the one that marks silent flow runs Crashed.
AUTOMATIONS, CRASH_SILENT_RUNS = Path(__file__).with_name("automations.yaml"), "dcgan-crash-silent-flow-runs"
ADMIN = "admin"  # MLflow's basic-auth administrator
# The secrets, by the environment variable that sets them; generated into secrets.env when unset.
SECRETS = {
    "mlflow": "DCGAN_TEAM_PG_MLFLOW_PASSWORD",
    "prefect": "DCGAN_TEAM_PG_PREFECT_PASSWORD",
    "admin": "MLFLOW_AUTH_ADMIN_PASSWORD",
    "flask": "MLFLOW_FLASK_SERVER_SECRET_KEY",
}


class Stack(BaseModel):
    """What `dcgan team up` was asked for, kept in state.json with the servers' process ids."""

    dir: Path
    host: str = "127.0.0.1"  # where MLflow and Prefect listen; 0.0.0.0 to serve other machines
    postgres_port: int = 5433
    mlflow_port: int = 5000
    prefect_port: int = 4200
    postgres_data: Path | None = None  # default: <dir>/postgres (as root: a folder the postgres user can reach)
    auth: bool = False  # MLflow's basic-auth app: users, passwords and permissions
    pool: str = "dcgan"
    pool_concurrency: int = 1  # flow runs at once on the pool
    pids: dict[str, int] = {}

    @property
    def cluster(self) -> Cluster:
        data = self.postgres_data or self.dir / "postgres"
        return Cluster(data, self.postgres_port, self.dir / "logs" / "postgres.log")

    @property
    def local_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.local_host}:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.local_host}:{self.prefect_port}/api"

    @property
    def git_remote(self) -> Path:
        return self.dir / "remotes" / "git"

    @property
    def dvc_remote(self) -> Path:
        return self.dir / "remotes" / "dvc"


def state_file(folder: Path) -> Path:
    return folder / "state.json"


def load(folder: Path) -> Stack:
    try:
        return Stack.model_validate_json(state_file(folder).read_text())
    except (OSError, ValueError) as err:
        raise DcganError(f"{state_file(folder)}: no team stack there ({err}): run `dcgan team up` first") from None


def load_secrets(folder: Path) -> dict[str, str]:
    """The environment's values first, then secrets.env's; missing ones are generated and saved (mode 600)."""
    path = folder / "secrets.env"
    saved = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                saved[key] = value
    values = {name: os.environ.get(var) or saved.get(var) or secrets.token_urlsafe(24) for name, var in SECRETS.items()}
    path.touch(mode=0o600)
    path.chmod(0o600)
    lines = [f"{SECRETS[name]}={value}" for name, value in values.items()]
    header = "# The team servers' passwords (dcgan team up). Keep this file out of git."
    path.write_text("\n".join([header, *lines]) + "\n")
    return values


def up(stack: Stack) -> Stack:
    """Start what is not running yet; returns the stack with its process ids. Stops what it started on failure."""
    if state_file(stack.dir).exists():
        previous = load(stack.dir)
        if any(_alive(pid) for pid in previous.pids.values()):
            raise DcganError(f"{stack.dir}: a team stack already runs there (`dcgan team down` first)")
    (stack.dir / "logs").mkdir(parents=True, exist_ok=True)
    passwords = load_secrets(stack.dir)
    roles = {"mlflow": passwords["mlflow"], "prefect": passwords["prefect"]}
    write_passfile(stack.dir / "pgpass", stack.postgres_port, roles)
    for remote in (stack.git_remote, stack.dvc_remote):
        remote.mkdir(parents=True, exist_ok=True)
    if not (stack.git_remote / "HEAD").exists():
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(stack.git_remote)], check=True)
    try:
        stack.cluster.start(roles)
        stack.pids["mlflow"] = _start_mlflow(stack, passwords)
        stack.pids["prefect"] = _start_prefect(stack)
        _save(stack)
        _wait("mlflow", f"{stack.mlflow_url}/health", stack)
        _wait("prefect", f"{stack.prefect_api_url}/health", stack)
        _create_pool(stack)
    except BaseException:
        down(stack)
        raise
    log.info("team stack up: MLflow %s, Prefect %s, pool %r", stack.mlflow_url, stack.prefect_api_url, stack.pool)
    return stack


def down(stack: Stack) -> None:
    """Stop the servers (each process group), then PostgreSQL. The data stays for the next `up`."""
    for name in ("prefect", "mlflow"):
        pid = stack.pids.pop(name, None)
        if pid and _alive(pid):
            _stop_group(pid)
    stack.cluster.stop()
    if state_file(stack.dir).exists():
        _save(stack)


def server_env(stack: Stack) -> dict[str, str]:
    """The servers' environment: the password file, no analytics, nothing of the caller's MLflow or Prefect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    return {**env, "PGPASSFILE": str(stack.dir / "pgpass"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def client_env(stack: Stack) -> dict[str, str]:
    """What a user's shell, a worker or a GPU machine sets to use the stack (credentials are each user's own)."""
    return {"MLFLOW_TRACKING_URI": stack.mlflow_url, "PREFECT_API_URL": stack.prefect_api_url}


def _start_mlflow(stack: Stack, passwords: dict[str, str]) -> int:
    env = server_env(stack)
    database = f"postgresql+psycopg://{stack.cluster.url('mlflow', 'mlflow')}"
    upgrade = subprocess.run([_bin("mlflow"), "db", "upgrade", database], env=env, capture_output=True, text=True)
    if upgrade.returncode:
        raise DcganError(f"`mlflow db upgrade` failed: {upgrade.stderr.strip()[-2000:]}")
    command = [_bin("mlflow"), "server", "--backend-store-uri", database, "--serve-artifacts"]
    command += ["--artifacts-destination", str(stack.dir / "mlflow-artifacts")]
    command += ["--host", stack.host, "--port", str(stack.mlflow_port)]
    if stack.auth:
        config = stack.dir / "basic_auth.ini"
        auth_database = f"postgresql+psycopg://{stack.cluster.url('mlflow', 'mlflow_auth')}"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {auth_database}\nadmin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": passwords["admin"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": passwords["flask"],
        }
        command += ["--app-name", "basic-auth"]
    return _spawn("mlflow", command, env, stack)


def _start_prefect(stack: Stack) -> int:
    database = f"postgresql+asyncpg://{stack.cluster.url('prefect', 'prefect')}"
    env = server_env(stack) | {
        "PREFECT_HOME": str(stack.dir / "prefect"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
    }
    command = [_bin("prefect"), "server", "start", "--host", stack.host, "--port", str(stack.prefect_port)]
    return _spawn("prefect", command, env, stack)


def _create_pool(stack: Stack) -> None:
    """The process work pool, its concurrency limit, and the automation that marks dead flow runs Crashed."""
    env = server_env(stack) | {"PREFECT_API_URL": stack.prefect_api_url, "PREFECT_HOME": str(stack.dir / "prefect")}
    for command in (
        ["work-pool", "create", stack.pool, "--type", "process", "--overwrite"],
        ["work-pool", "set-concurrency-limit", stack.pool, str(stack.pool_concurrency)],
    ):
        _prefect(command, env)
    existing = httpx.post(f"{stack.prefect_api_url}/automations/filter", json={}, timeout=30).json()
    if CRASH_SILENT_RUNS not in {automation["name"] for automation in existing}:
        _prefect(["automation", "create", "--from-file", str(AUTOMATIONS)], env)


def _prefect(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([_bin("prefect"), *command], env=env, capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise DcganError(f"`prefect {' '.join(command)}` failed: {result.stdout[-1000:]}{result.stderr[-1000:]}")
    return result.stdout


def _spawn(name: str, command: list[str], env: dict[str, str], stack: Stack) -> int:
    with open(stack.dir / "logs" / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def _wait(name: str, url: str, stack: Stack) -> None:
    """Until the server `name` answers at `url`; fails with its log's tail if it dies or the time runs out."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not all(_alive(pid) for pid in stack.pids.values()):
            break
        time.sleep(1)
    log_file = stack.dir / "logs" / f"{name}.log"
    tail = log_file.read_text(errors="replace")[-2000:]
    raise DcganError(f"the {name} server did not answer at {url}: see {log_file}:\n{tail}")


def _stop_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def _save(stack: Stack) -> None:
    state_file(stack.dir).write_text(stack.model_dump_json(indent=2))


def _bin(program: str) -> str:
    """The program beside this Python (the venv's), so the servers run the locked versions."""
    return str(Path(sys.executable).parent / program)
