"""Training across two hosts: two network namespaces joined by a veth pair, one torchrun node in each (gloo on the
CPU), meeting at a c10d rendezvous on the first. Each host has its own project folder, as hosts share no disk.

Needs root (`ip netns`), as CI has.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from dcgan.classifier import train_classifier
from dcgan.config import Paths, load_params
from dcgan.data import prepare
from dcgan.tracking import experiment_name

from .conftest import TINY, Processes, descendants, user_env, write_params

SUBNET = "10.213.7"
PORT = 29400


@contextmanager
def two_hosts() -> Iterator[list[tuple[str, str, str]]]:
    """Two network namespaces on one veth link: [(namespace, address, interface)] for each; removed after."""
    tag = f"dcgan{os.getpid() % 100000}"
    hosts = [(f"{tag}a", f"{SUBNET}.1", f"{tag}va"), (f"{tag}b", f"{SUBNET}.2", f"{tag}vb")]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        for namespace, _, _ in hosts:
            ip("netns", "add", namespace)
        ip("link", "add", hosts[0][2], "type", "veth", "peer", "name", hosts[1][2])
        for namespace, address, interface in hosts:
            ip("link", "set", interface, "netns", namespace)
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", interface)
            ip("-n", namespace, "link", "set", interface, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        yield hosts
    finally:
        for namespace, _, _ in hosts:  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _host_projects(project: Paths, names: list[str]) -> list[Paths]:
    """One project folder per host, each with the prepared data (what `dvc pull` gives a real host)."""
    roots = []
    for name in names:
        root = project.root.parent / name
        root.mkdir()
        shutil.copy(project.root / "params.yaml", root)
        shutil.copytree(project.prepared, root / "data" / "prepared")
        shutil.copytree(project.models, root / "models")  # the classifier
        roots.append(Paths(root))
    return roots


def _start_hosts(roots: list[Paths], hosts: list[tuple[str, str, str]], procs: Processes, run: str) -> list:
    overrides = ["-S", "train.nnodes=2", "-S", f"train.rdzv_endpoint={SUBNET}.1:{PORT}", "-S", "train.max_restarts=1"]
    started = []
    for i, (paths, (namespace, address, interface)) in enumerate(zip(roots, hosts, strict=True)):
        # This host's address for torchrun ($PET_LOCAL_ADDR) and for gloo, and which host holds the rendezvous:
        # the namespaces share one hostname, which torchrun would otherwise go by.
        env = user_env(PET_LOCAL_ADDR=address, GLOO_SOCKET_IFNAME=interface, PET_RDZV_CONF=f"is_host={i == 0}")
        command = ["ip", "netns", "exec", namespace, "dcgan", "train", *overrides]
        started.append(procs.start(f"{run}-{namespace}", command, paths.root, env))
    return started


def _wait(started: list, procs: Processes, timeout: float = 300) -> None:
    """Until both hosts end; the first failure fails the test at once (the other host would wait for it)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in started) and time.monotonic() < deadline:
        if any(p.poll() for p in started):
            break
        time.sleep(0.5)
    assert [p.poll() for p in started] == [0, 0], procs.tail()


def _training_processes(pid: int) -> list[int]:
    """The `dcgan train` workers torchrun started under `pid` (not the launcher, not torchrun)."""
    found = []
    for child in descendants(pid):
        try:
            args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--params" in b" ".join(args) and b"torch.distributed.run" not in args:
            found.append(child)
    return found


def test_two_hosts_train_one_run_and_survive_a_killed_process(project: Paths, processes: Processes) -> None:
    tree = {**TINY, "train": {**TINY["train"], "epochs": 12, "checkpoint_every": 5}}  # 96 steps: the kill at ~10
    params = write_params(project.root, {**tree, "evaluate": {**TINY["evaluate"], "every_epochs": 10}})
    prepare(params, project)
    train_classifier(params, project)

    with two_hosts() as hosts:
        # Uninterrupted: both hosts finish with the same weights, and one MLflow run holds the job.
        whole = _host_projects(project, ["whole-a", "whole-b"])
        _wait(_start_hosts(whole, hosts, processes, "whole"), processes)
        weights = [(p.models / "generator.safetensors").read_bytes() for p in whole]
        assert weights[0] == weights[1]
        assert (whole[0].models / "discriminator.safetensors").read_bytes() == (
            whole[1].models / "discriminator.safetensors"
        ).read_bytes()
        runs = []
        for paths in whole:
            if (paths.root / "mlflow.db").exists():
                client = mlflow.MlflowClient(f"sqlite:///{paths.root / 'mlflow.db'}")
                experiment = client.get_experiment_by_name(experiment_name("mnist"))
                runs += client.search_runs([experiment.experiment_id]) if experiment else []
        assert [run.info.status for run in runs] == ["FINISHED"]
        assert runs[0].data.params["train.nnodes"] == "2"

        # Killed: one training process on the second host dies mid-run; torchrun restarts the job, every process
        # resumes from its host's checkpoint, and the weights end bit for bit as the uninterrupted run's.
        killed = _host_projects(project, ["killed-a", "killed-b"])
        started = _start_hosts(killed, hosts, processes, "killed")
        checkpoints = killed[1].checkpoints
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("*/last.pt")) and time.monotonic() < deadline:
            time.sleep(0.01)
        (last,) = checkpoints.glob("*/last.pt")
        first_write = last.stat().st_mtime_ns
        while last.stat().st_mtime_ns == first_write and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.02)  # between two checkpoints, not during one
        victims = _training_processes(started[1].pid)
        assert victims, processes.tail()
        os.kill(victims[0], signal.SIGKILL)
        _wait(started, processes)
        log = processes.tail()
        assert "resuming at step" in log, log
        assert [(p.models / "generator.safetensors").read_bytes() for p in killed] == weights, log
        params_b = load_params(killed[1].root / "params.yaml")
        assert params_b.train.nnodes == 1  # the hosts' params.yaml untouched: the overrides were for one run
