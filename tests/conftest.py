"""Shared fixtures: a tiny configuration and a project folder holding the fixture's MNIST slice."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# One thread per torch process: the tiny models gain nothing from more, and the workers (make test) and the
# commands they start share the machine's cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and so would every command it
# starts: their Ctrl-C (SIGINT) would do nothing. A handler here is reset to the default in each child on exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from dcgan.config import Params, Paths, load_params  # noqa: E402
from dcgan.data import fetch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DIR = Path(__file__).parent / "fixtures" / "mnist"
# SHA-256 of the fixture's uncompressed files (see fixtures/mnist/README.md).
FIXTURE_SHA256 = {
    "train-images-idx3-ubyte": "dc15d0b5d1b0c2e3735e17f364421a17ca95485dfe2e28bf4e8cc1c45b02bb2f",
    "train-labels-idx1-ubyte": "ac62e054281959338268df783398afca3e2244b1de6612e7140bd02995181396",
    "t10k-images-idx3-ubyte": "d13186a8171483437b6a936d3a0131b2bb83cc7008923c4be04f42b173a18935",
    "t10k-labels-idx1-ubyte": "7b7f0b73a7c9b36bc8377eb426dd6f4a2b668c90185f8f8f4175105f0d84fb0f",
}

# Small enough for seconds on 2 cores: 16 x 16 images, 8 steps an epoch.
TINY = {
    "seed": 0,
    "data": {"dataset": "mnist", "image_size": 16, "train_limit": 256, "source_dir": None, "bad_images": "skip"},
    "model": {"z_dim": 8, "g_width": 8, "d_width": 8, "init_std": 0.02, "leaky_slope": 0.2},
    "train": {
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.0002,
        "betas": [0.5, 0.99],
        "device": "cpu",
        "precision": "fp32",
        "checkpoint_every": 5,
        "log_every": 4,
    },
    "classifier": {"epochs": 1, "batch_size": 64, "lr": 0.001},
    "evaluate": {"n_samples": 64, "every_epochs": 1, "quick_samples": 32, "kid_subset_size": 16},
    "export": {
        "opset": 20,
        "parity_atol": 1.0e-5,
        "parity_atol_cuda": 1.0e-4,
        "bn_recalibration_batches": 4,
        "fp16": False,
        "parity_atol_fp16": 0.0078,
    },
}


def write_params(root: Path, tree: dict = TINY, **overrides: object) -> Params:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return load_params(root / "params.yaml", overrides)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "DCGAN_MNIST_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Paths:
    """A project root with tiny params.yaml and the fixture's IDX files fetched into data/raw/mnist."""
    write_params(tmp_path)
    fetch(load_params(tmp_path / "params.yaml", {"data.source_dir": str(FIXTURE_DIR)}), Paths(tmp_path), FIXTURE_SHA256)
    return Paths(tmp_path)


@pytest.fixture
def tiny(project: Paths) -> Params:
    return load_params(project.root / "params.yaml")


BIN = Path(sys.executable).parent


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell in the project: the venv's commands first, none of the MLflow, Prefect
    or project settings of the shell running the tests (no tracking server unless `extra` names one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "DCGAN_"))}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1", **extra}


def run_cmd(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=repo, env=user_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project's pipeline, tiny params and the fixture data, committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo)
    for package in ("dcgan", "flows"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    shutil.copy(REPO / ".gitignore", repo)
    run_cmd(repo, "git", "init", "-q", "-b", "main")
    run_cmd(repo, "git", "config", "user.email", "test@example.com")
    run_cmd(repo, "git", "config", "user.name", "test")
    run_cmd(repo, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the project's: cache links, no copies
    fetch(load_params(repo / "params.yaml", {"data.source_dir": str(FIXTURE_DIR)}), Paths(repo), FIXTURE_SHA256)
    run_cmd(repo, "dvc", "add", "-q", "data/raw/mnist")
    run_cmd(repo, "git", "add", "-A")
    run_cmd(repo, "git", "commit", "-qm", "pipeline")
    return repo


@contextmanager
def mirror(folder: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving `folder`, as a publisher's download site; yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


# Real servers and long-running commands, started in their own session and stopped with their children.
STARTUP_S = 120


def free_port() -> int:
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


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, children first, as /proc lists them now."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except OSError:
            continue
        found += children
        todo += children
    return found


def wait_until(check, what: str, procs: Processes, timeout: float = STARTUP_S) -> None:
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
