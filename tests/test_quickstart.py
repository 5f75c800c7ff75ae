"""The README's commands as a newcomer types them: a fresh `git clone`, fresh state (no .prefect/, no mlflow.db, no
server running), then `make run`, `make web`, `make repro`, `make prefect-server` and `make serve` as subprocesses.

The clone shares this suite's venv (a symlink; its pyproject.toml and requirements.lock are dated before the
venv's install, so make finds the venv up to date and leaves it alone) and imports its own code (PYTHONPATH).
`git clone` takes what is committed. One change to the clone: its data. The official MNIST files cannot be made
here, so the fixture's slice is versioned in their place (`dvc add data/raw/mnist`, committed), as a team's own
data would be; the commands then find the raw data up to date, as after a `dvc pull`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest

from dcgan.config import Params, Paths, load_params
from dcgan.data import fetch
from dcgan.web.browser import chromium

from .conftest import (
    BIN,
    FIXTURE_DIR,
    FIXTURE_SHA256,
    REPO,
    TINY,
    Processes,
    free_port,
    run_cmd,
    user_env,
    wait_until,
)


def tiny_overrides() -> str:
    """TINY as `make ... OVERRIDES="..."`: each of its values that differs from the committed params.yaml."""
    committed = load_params(REPO / "params.yaml").flat()
    tiny = Params.model_validate(TINY).flat()
    return " ".join(f"{key}={json.dumps(value)}" for key, value in tiny.items() if value != committed[key])


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    run_cmd(tmp_path, "git", "clone", "-q", str(REPO), str(clone))
    (clone / ".venv").symlink_to(BIN.parent)
    older = (BIN.parent / ".installed").stat().st_mtime_ns - 10**9
    for name in ("pyproject.toml", "requirements.lock"):
        os.utime(clone / name, ns=(older, older))
    fetch(load_params(clone / "params.yaml", {"data.source_dir": str(FIXTURE_DIR)}), Paths(clone), FIXTURE_SHA256)
    run_cmd(clone, "git", "config", "user.email", "test@example.com")
    run_cmd(clone, "git", "config", "user.name", "test")
    run_cmd(clone, "dvc", "add", "-q", "data/raw/mnist")
    run_cmd(clone, "git", "commit", "-qam", "our data")
    return clone


def shell(cwd: Path, command: str, *, unshare: tuple[str, ...] = (), timeout: int = 600) -> subprocess.CompletedProcess:
    """`command` as a user's shell runs it (with `unshare`, in new Linux namespaces), in its own session; what it
    started is stopped afterwards. stdout holds stdout and stderr together."""
    args = ["unshare", *unshare, "sh", "-c", command] if unshare else ["sh", "-c", command]
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=user_env(PYTHONPATH=str(cwd)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{command} still running after {timeout} s:\n{out[-5000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "pip install" not in out, f"make set up the shared venv again, for the clone:\n{out[-3000:]}"
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def assert_trained_tracked_and_registered(clone: Path) -> None:
    """What a user looks for after a run: the ONNX file, the metrics, the MLflow run with its images, the
    registered model with its alias."""
    paths = Paths(clone)
    assert (paths.models / "generator.onnx").is_file()
    metrics = json.loads((paths.reports / "metrics.json").read_text())
    assert {"fid", "inception_score", "digits_covered"} <= set(metrics)
    client = mlflow.MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dcgan-mnist").experiment_id])
    assert run.info.status == "FINISHED"
    assert {"loss_d", "fid_quick", "eval_fid", "parity_max_abs_error"} <= set(run.data.metrics)
    pictures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"samples.png", "digits.png", "interpolation.png", "class_histogram.png"} <= pictures
    assert client.list_artifacts(run.info.run_id, "images")  # the sample grid of each epoch
    assert client.get_model_version_by_alias("dcgan-generator", "champion").run_id == run.info.run_id


def test_make_run_then_make_web_on_a_fresh_clone(clone: Path, processes: Processes):
    result = shell(clone, f"make run OVERRIDES={shlex.quote(tiny_overrides())}")
    assert result.returncode == 0, result.stdout[-8000:]
    assert "Starting a local Prefect server for this run" in result.stdout
    assert "done: MLflow run" in result.stdout
    assert "[E:onnxruntime" not in result.stdout  # no red error from the CUDA provider on a machine without one
    assert (clone / ".prefect" / "prefect.db").is_file()  # the fresh PREFECT_HOME the Makefile gives
    assert_trained_tracked_and_registered(clone)

    # Then the champion in the browser: `make web` builds the page and serves it until stopped.
    port = free_port()
    processes.start("make-web", ["make", "web", f"WEB_PORT={port}"], cwd=clone, env=user_env(PYTHONPATH=str(clone)))
    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: httpx.get(url).status_code == 200, "make web", processes)
    with chromium() as browser:
        page = browser.new_page()
        page.goto(url, wait_until="load")
        page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60_000)
        assert "dcgan-generator version 1" in page.inner_text("#card")
        assert page.locator(".cell canvas").count() == 16


def test_make_web_before_any_run_says_what_to_do(clone: Path):
    line = one_line_error(shell(clone, "make web", timeout=300))
    assert line.startswith("error: models:/dcgan-generator@champion: cannot get it")


def test_make_repro_on_a_fresh_clone(clone: Path):
    result = shell(clone, f"make repro OVERRIDES={shlex.quote(tiny_overrides())}")
    assert result.returncode == 0, result.stdout[-8000:]
    assert "up to date: data/raw/mnist matches mnist.dvc" in result.stdout
    assert "Running stage 'export'" in result.stdout
    assert_trained_tracked_and_registered(clone)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The run failed with a single `error:` line, and no traceback anywhere in its output."""
    assert result.returncode != 0, result.stdout[-5000:]
    assert "Traceback" not in result.stdout, result.stdout[-5000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    return line


def test_make_run_without_mnist_or_network_says_what_to_do(clone: Path):
    """No raw data and no network (a network namespace with loopback alone): every download fails, retried."""
    run_cmd(clone, "git", "checkout", "-q", "HEAD~1")  # back to the official data/raw/mnist.dvc
    (clone / "data" / "raw" / "mnist").rename(clone / "fixture")
    result = shell(clone, "ip link set lo up && make run OVERRIDES=train.epochs=1", unshare=("--net",))
    line = one_line_error(result)
    assert "train-images-idx3-ubyte: download failed from every mirror" in line
    assert "offline, point data.source_dir or $DCGAN_MNIST_DIR at a folder of the IDX files" in line


def test_make_run_in_a_read_only_folder_says_so(clone: Path):
    read_only = clone.parent / "read-only"
    read_only.mkdir()
    mount = f"mount --bind {clone} {read_only} && mount -o remount,ro,bind {read_only}"
    result = shell(read_only, f"{mount} && cd {read_only} && make run", unshare=("--mount",), timeout=300)
    line = one_line_error(result)
    assert f"error: {read_only}: cannot write there (Read-only file system)" in line
    assert "run it in a folder you can write to" in line


@pytest.fixture
def not_prefect() -> Iterator[int]:
    """A port on 127.0.0.1 taken by an HTTP server that is not Prefect."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_make_prefect_server_on_a_taken_port_says_so(clone: Path, not_prefect: int):
    result = shell(clone, f"make prefect-server PREFECT_PORT={not_prefect}", timeout=120)
    assert result.returncode != 0
    assert f"Port {not_prefect} is already in use" in result.stdout


def test_make_serve_against_something_else_says_so(clone: Path, not_prefect: int):
    result = shell(clone, f"make serve PREFECT_PORT={not_prefect}", timeout=120)
    line = one_line_error(result)
    assert f"http://127.0.0.1:{not_prefect}/api/health answered HTTP 404: not a Prefect server" in line
