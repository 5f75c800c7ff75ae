"""Training on several devices with PyTorch's own engine: torchrun starts one process per device, DDP keeps the
networks in step.

`train` with `train.nproc_per_node > 1` or `train.nnodes > 1` calls `launch`, which reruns `dcgan train` under
torchrun with the same params; each process then finds its place from torchrun's environment (`Ranks.from_env`).
Across hosts, every host runs the same `dcgan train` and torchrun's c10d rendezvous at `train.rdzv_endpoint`
joins them; with `train.max_restarts` torchrun restarts the whole job when a process dies, and each process
resumes from its host's last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from dcgan.checkpoint import checkpoint_path
from dcgan.config import Params, Paths
from dcgan.errors import DcganError
from dcgan.files import write_json_atomic

log = logging.getLogger(__name__)

# Where rank 0 reports its progress for the launching process (which passes it on to its own progress hook).
PROGRESS_FILE_ENV = "DCGAN_PROGRESS_FILE"
ProgressHook = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job: rank 0 of 1 when there is none."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs to MLflow and measures the quick FID."""
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        """Local rank 0 writes its host's checkpoints, weights and reports: hosts share no disk."""
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch(
    params: Params, paths: Paths, run_tags: Mapping[str, str] | None, on_progress: ProgressHook | None = None
) -> dict[str, Any]:
    """Run `dcgan train` under torchrun, one process per device, with these exact params; returns this host's
    result (reports/train.json). `on_progress` is called with rank 0's progress, read each second while it trains.
    """
    cfg = params.train
    n = cfg.nproc_per_node
    with tempfile.TemporaryDirectory(prefix="dcgan-torchrun-") as tmp:
        params_file = Path(tmp) / "params.yaml"  # the effective params, overrides included
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        progress = Path(tmp) / "progress.json"
        tags = [f"--tag={key}={value}" for key, value in (run_tags or {}).items()]
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}"]
        if cfg.nnodes == 1:
            command += ["--standalone"]
        else:  # the job's id: its training settings, the same on every host (and this host's address: $PET_LOCAL_ADDR)
            job = checkpoint_path(params, paths).parent.name
            command += [f"--nnodes={cfg.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}"]
            command += [f"--rdzv-id=dcgan-{job}"]
        command += [f"--max-restarts={cfg.max_restarts}", "-m", "dcgan", "train", f"--params={params_file}", *tags]
        log.info("launching %d training processes on this host: %s", n, " ".join(command))
        # A fresh store for each restart of the job: torchrun's store shared across restarts keeps the dead
        # processes' addresses, and the restarted ones across hosts failed to connect (pytorch/pytorch#167288).
        env = {**os.environ, PROGRESS_FILE_ENV: str(progress), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        with subprocess.Popen(command, cwd=paths.root, env=env) as proc:
            try:
                reported = None
                ended = False
                while not ended:  # the last read comes after the end, so the last report is never missed
                    try:
                        proc.wait(timeout=1)
                        ended = True
                    except subprocess.TimeoutExpired:
                        pass
                    report = json.loads(progress.read_text()) if progress.exists() else None  # written atomically
                    if on_progress and report and report != reported:
                        on_progress(report["step"], report["total_steps"], report["metrics"])
                        reported = report
            except BaseException:
                proc.terminate()  # torchrun stops its workers on SIGTERM
                raise
    if proc.returncode:
        raise DcganError(
            f"torchrun with {n} training processes on this host failed (exit {proc.returncode}): see their errors above"
        )
    result: dict[str, Any] = json.loads((paths.reports / "train.json").read_text())
    return result


def progress_reporter() -> ProgressHook | None:
    """Under `launch`, rank 0's progress hook: it writes the progress where the launching process reads it."""
    path = os.environ.get(PROGRESS_FILE_ENV)
    if not path:
        return None

    def report(step: int, total_steps: int, metrics: dict[str, float]) -> None:
        write_json_atomic(Path(path), {"step": step, "total_steps": total_steps, "metrics": metrics})

    return report


def init(ranks: Ranks, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world_size)


def mean(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of `values` over all processes (itself without DDP)."""
    if ranks.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ranks.world_size
    return values


def share(value: str, ranks: Ranks) -> str:
    """Rank 0's `value`, on every rank."""
    return str(share_object(value, ranks))


def share_object(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` (tensors and containers, sent between our own processes), on every rank."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_step(step: int, ranks: Ranks, checkpoint: Path) -> None:
    """Every process resumes from the same step: each host read its own checkpoint."""
    if ranks.distributed and (theirs := int(share(str(step), ranks))) != step:
        raise DcganError(
            f"{checkpoint}: holds step {step} on this host but step {theirs} on rank 0's: a host died between two "
            "hosts' checkpoint writes. Copy rank 0's host's models/checkpoints here, then start again"
        )


def broadcast_buffers(networks: Sequence[nn.Module], ranks: Ranks) -> None:
    """Give every process rank 0's BatchNorm statistics, as DDP does at the start of each forward pass: after the
    last one, each process has updated them with its own share of the batch."""
    if ranks.distributed:
        for net in networks:
            for buffer in net.buffers():
                dist.broadcast(buffer, src=0)


def check_identical(networks: Sequence[nn.Module], ranks: Ranks) -> None:
    """Fail unless every process holds exactly rank 0's weights and BatchNorm statistics."""
    if not ranks.distributed:
        return
    for net in networks:
        mine = torch.cat([t.detach().flatten().float() for t in net.state_dict().values() if t.is_floating_point()])
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        same = torch.tensor([int(torch.equal(mine, reference))], device=mine.device)
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        if not same.item():
            raise DcganError(f"the {type(net).__name__}'s weights differ between the training processes")
    log.info("all %d processes hold identical weights", ranks.world_size)
