"""The training loop, read top to bottom: the seed's DCGAN step, checkpoints, MLflow.

data/prepared/train.safetensors -> models/{generator,discriminator}.safetensors
                                   models/checkpoints/<settings>/last.pt  (resumed when the settings match)
                                   reports/losses.csv           (per-step losses, a DVC plot)
                                   reports/train.json           (the TrainResult, a DVC metric)

With `train.nproc_per_node > 1` or `train.nnodes > 1` it runs under torchrun (dcgan/distributed.py): each process
takes its share of every batch and DDP averages the gradients; rank 0 alone logs to MLflow, and each host's local
rank 0 writes that host's checkpoints, weights and reports.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlflow
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dcgan import distributed, tracking
from dcgan.checkpoint import checkpoint_path, load_checkpoint, resume_mismatch, save_checkpoint
from dcgan.config import Params, Paths, TrainParams
from dcgan.data import epoch_order, load_prepared
from dcgan.distributed import ProgressHook, Ranks
from dcgan.ema import Ema
from dcgan.errors import CheckpointError, DcganError, TrainingDiverged
from dcgan.evaluate import FidTracker
from dcgan.files import remove_leftovers, write_bytes_atomic, write_json_atomic
from dcgan.health import Finding, Monitor
from dcgan.models import Discriminator, Generator, build_models
from dcgan.pictures import sample_grid
from dcgan.tensors import save_tensors

log = logging.getLogger(__name__)

METRICS = ("loss_d", "loss_g", "d_real", "d_fake")
GRID_SIZE = 64


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    steps: int
    resumed_from: int  # 0 for a fresh run
    final: dict[str, float]  # the last step's METRICS
    images_per_second: float
    best_step: int  # the step of the saved generator: the best by quick FID, else the last
    best_fid: float | None  # its quick FID (None when evaluate.every_epochs is 0)
    health: str | None  # the failure the training-health monitor found, in words; None when it found none


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DcganError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    'auto' takes bf16 on a CUDA device that has it. On the CPU it stays fp32: on our AVX512-BF16 CPUs bf16
    convolutions (and matmuls) measured slower than fp32 (docs/benchmarks.md).
    """
    if choice == "bf16" or (choice == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[None]:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@dataclass
class Nets:
    """The two networks and their optimizers, as `train` and the benchmark build them."""

    generator: Generator  # the modules whose weights are saved
    discriminator: Discriminator
    g_step: nn.Module  # what the training step calls: the same networks, wrapped by DDP and torch.compile if asked
    d_step: nn.Module
    d_judge: nn.Module  # D as G's step calls it: frozen there, so never DDP (no gradients to average)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def build_nets(params: Params, device: torch.device, channels: int, ranks: Ranks | None = None) -> Nets:
    cfg = params.train
    ranks = ranks or Ranks()
    torch.manual_seed(params.seed)
    generator, discriminator = build_models(params.model, params.data.image_size, channels)
    if ranks.distributed and cfg.sync_batchnorm:
        if device.type != "cuda":
            raise DcganError("train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm has no CPU version)")
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    generator.to(device).to(memory_format=memory_format)
    discriminator.to(device).to(memory_format=memory_format)
    fused = device.type == "cuda"  # one kernel for all parameters
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused)
    g_step: nn.Module = generator
    d_step: nn.Module = discriminator
    d_judge: nn.Module = discriminator
    if ranks.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        g_step = DistributedDataParallel(generator, device_ids=device_ids)
        d_step = DistributedDataParallel(discriminator, device_ids=device_ids)
    if cfg.compile:
        g_step, d_step, d_judge = (cast(nn.Module, torch.compile(net)) for net in (g_step, d_step, d_judge))
    return Nets(generator, discriminator, g_step, d_step, d_judge, opt_g, opt_d)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No gradients for the module's weights inside (they still flow through it to its inputs)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


def train_step(nets: Nets, real: torch.Tensor, z: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """One step of the seed: D on a real and a fake batch, then G with the non-saturating loss.

    Returns the detached METRICS as one tensor, so that the caller decides when to sync with the host.
    """
    ones = torch.ones(len(real), device=real.device)
    zeros = torch.zeros(len(real), device=real.device)

    # (1) D: maximise log D(x) + log(1 - D(G(z))). Real and fake go through D separately, as in the
    # seed, so that each BatchNorm batch holds one kind of image.
    with autocast(real.device, dtype):
        fake = nets.g_step(z)  # B x C x S x S
        logits_real = nets.d_step(real)  # B
        logits_fake = nets.d_step(fake.detach())  # B
        loss_d = F.binary_cross_entropy_with_logits(logits_real, ones) + F.binary_cross_entropy_with_logits(
            logits_fake, zeros
        )
    nets.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    nets.opt_d.step()

    # (2) G: maximise log D(G(z)) (the non-saturating loss), against the D just updated. Only G is stepped,
    # so D's weight gradients would be computed for nothing: freezing D skips them (2.44 -> 2.24 GFLOP per
    # image, the same weights to the last bit; tested).
    with frozen(nets.discriminator):
        with autocast(real.device, dtype):
            loss_g = F.binary_cross_entropy_with_logits(nets.d_judge(fake), ones)
        nets.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
    nets.opt_g.step()

    d_real, d_fake = torch.sigmoid(logits_real.detach()).mean(), torch.sigmoid(logits_fake.detach()).mean()
    return torch.stack([loss_d.detach(), loss_g.detach(), d_real, d_fake]).float()


def learning_rate(cfg: TrainParams, step: int, total_steps: int) -> float:
    """The rate of the step after `step` steps: the seed's constant `train.lr`, or with `train.lr_decay_start`
    constant until that fraction of the run, then falling linearly to lr / (steps left) at the last step."""
    if cfg.lr_decay_start is None:
        return cfg.lr
    decay_from = round(cfg.lr_decay_start * total_steps)
    return cfg.lr * min(1.0, (total_steps - step) / max(1, total_steps - decay_from))


def train(
    params: Params,
    paths: Paths,
    on_progress: ProgressHook | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train (or resume) the DCGAN on the prepared data, logging to the pipeline's MLflow run.

    `on_progress(step, total_steps, metrics)` is called each time the losses are logged; `run_tags` are set on
    the MLflow run (e.g. the orchestrator's run id).
    """
    cfg = params.train
    ranks = Ranks.from_env()
    if (cfg.nproc_per_node > 1 or cfg.nnodes > 1) and not ranks.distributed:
        return TrainResult(**distributed.launch(params, paths, run_tags, on_progress))
    if ranks.world_size != cfg.nproc_per_node * cfg.nnodes:
        raise DcganError(
            f"train.nproc_per_node is {cfg.nproc_per_node} on {cfg.nnodes} host(s) but torchrun started "
            f"{ranks.world_size} processes: set -S train.nproc_per_node=... and -S train.nnodes=... to match, or run "
            "`dcgan train` and let it launch torchrun"
        )
    device = resolve_device(cfg.device, ranks.local_rank)
    if ranks.distributed:
        distributed.init(ranks, device)
        on_progress = on_progress or distributed.progress_reporter()
    dtype = resolve_precision(cfg.precision, device)
    # N x C x S x S, all resident on the device (no DataLoader): the first data.train_limit images
    images, _ = load_prepared(paths, "train", params.data, limit=params.data.train_limit, device=device)
    steps_per_epoch = len(images) // cfg.batch_size  # the last partial batch is dropped (BatchNorm)
    total_steps = cfg.epochs * steps_per_epoch
    share = slice(ranks.rank, None, ranks.world_size)  # this process's part of every batch
    log.info(
        "device %s, precision %s, %d steps of %d images over %d process(es)",
        device, dtype or "fp32", total_steps, cfg.batch_size, ranks.world_size,
    )  # fmt: skip

    nets = build_nets(params, device, images.shape[1], ranks)
    generator, discriminator = nets.generator, nets.discriminator
    # With train.ema_decay, the average of G's weights is what is measured, kept and saved.
    ema = Ema(generator, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay is not None and ranks.is_main else None
    kept = ema.module if ema else generator
    noise = torch.Generator(device).manual_seed(params.seed)  # the same stream in every process
    # The grid's latents come from their own RNG so that a resumed run shows the same digits.
    fixed_z = torch.randn(GRID_SIZE, params.model.z_dim, 1, 1, generator=torch.Generator().manual_seed(params.seed))
    fixed_z = fixed_z.to(device)
    history = torch.zeros(total_steps, len(METRICS))  # per-step METRICS, kept in the checkpoint
    # Every evaluate.every_epochs, a quick FID; the generator with the best one is the one saved and exported.
    fid_tracker = FidTracker(params, paths, device) if params.evaluate.every_epochs and ranks.is_main else None
    fids: list[tuple[int, float]] = []  # (step, quick FID)
    best: dict[str, Any] | None = None  # {"step", "fid", "generator": state dict on the CPU}
    health = Monitor(cfg.health_window, judged_by_fid=fid_tracker is not None)  # the training-health monitor

    step, run_id = 0, None
    last = checkpoint_path(params, paths)
    if ranks.is_node_main:
        remove_leftovers(last)
    if last.exists():
        state = load_checkpoint(last)
        if mismatch := resume_mismatch(state, params):
            raise CheckpointError(f"{last}: trained with other settings ({'; '.join(mismatch)}): move it away")
        if state["step"] > total_steps:
            raise CheckpointError(
                f"{last}: holds step {state['step']}, beyond this run's {total_steps} steps: raise train.epochs to "
                "continue it, or move it away to train a shorter run"
            )
        if state["step"] == total_steps:
            log.warning("%s: that run finished at step %d: training again from scratch", last, total_steps)
        else:
            try:
                generator.load_state_dict(state["generator"])
                discriminator.load_state_dict(state["discriminator"])
                nets.opt_g.load_state_dict(state["opt_g"])
                nets.opt_d.load_state_dict(state["opt_d"])
                noise.set_state(state["noise_rng"])
                if ema:
                    ema.module.load_state_dict(state["ema"])
            except (RuntimeError, ValueError, KeyError) as err:
                raise CheckpointError(
                    f"{last}: does not fit this model ({str(err).splitlines()[0]}): move it away"
                ) from None
            step, run_id = state["step"], state["mlflow_run_id"]
            history[:step] = state["history"]
            fids, best = [(int(s), f) for s, f in state["fids"].tolist()], state["best"]
            log.warning("%s: resuming at step %d of %d", last, step, total_steps)
    distributed.check_same_step(step, ranks, last)
    resumed_from = checkpointed = step

    def checkpoint() -> None:
        save_checkpoint(
            last,
            {
                "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(),
                "opt_g": nets.opt_g.state_dict(),
                "opt_d": nets.opt_d.state_dict(),
                "ema": ema.module.state_dict() if ema else None,
                "noise_rng": noise.get_state(),
                "step": step,
                "history": history[:step].clone(),
                "fids": torch.tensor(fids, dtype=torch.float64).reshape(-1, 2),
                "best": best,
                "params": params.flat(),
                "mlflow_run_id": run_id,
            },
        )

    run = tracking.training_run(params, paths, run_id, run_tags) if ranks.is_main else nullcontext("")
    with run as run_id:
        run_id = distributed.share(run_id, ranks)
        generator.train()
        discriminator.train()
        pending = []  # (step, metrics on the device) not yet logged: one host sync per log_every steps
        started, first_step = time.perf_counter(), step
        order = epoch_order(len(images), params.seed, step // steps_per_epoch).to(device)
        bar = tqdm(
            total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0, disable=not ranks.is_main
        )
        with bar:
            while step < total_steps:
                epoch, i = divmod(step, steps_per_epoch)
                if i == 0:
                    order = epoch_order(len(images), params.seed, epoch).to(device)
                real = images[order[i * cfg.batch_size : (i + 1) * cfg.batch_size][share]]  # B/world x C x S x S
                z = torch.randn(cfg.batch_size, params.model.z_dim, 1, 1, generator=noise, device=device)[share]
                rate = learning_rate(cfg, step, total_steps)
                for group in (*nets.opt_g.param_groups, *nets.opt_d.param_groups):
                    group["lr"] = rate
                pending.append(train_step(nets, real, z, dtype))
                step += 1
                if ema:
                    ema.update(generator, step)
                bar.update()

                end_of_epoch = step % steps_per_epoch == 0
                checkpoint_due = end_of_epoch or step % cfg.checkpoint_every == 0 or step == total_steps
                # Sync before every checkpoint too, so that no checkpoint holds weights from a diverged step.
                if step % cfg.log_every == 0 or checkpoint_due:
                    values = distributed.mean(torch.stack(pending), ranks).cpu()  # the host sync
                    first = step - len(pending)
                    pending.clear()
                    check_finite(values, first, last, checkpointed)
                    history[first:step] = values
                    if found := health.losses(history, step):
                        report_unhealthy(found, ranks)
                    rows = [(first + 1 + k, dict(zip(METRICS, v, strict=True))) for k, v in enumerate(values.tolist())]
                    if ranks.is_main:
                        tracking.log_step_metrics(run_id, rows)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in rows[-1][1].items()}, refresh=False)
                        if on_progress:
                            on_progress(step, total_steps, rows[-1][1])
                if end_of_epoch and ranks.is_main:
                    log_sample_grid(generator, fixed_z, epoch + 1)
                if (
                    fid_tracker
                    and end_of_epoch
                    and ((epoch + 1) % params.evaluate.every_epochs == 0 or step == total_steps)
                ):
                    fid, coverage = fid_tracker.quick(kept)
                    fids.append((step, fid))
                    mlflow.log_metric("fid_quick", fid, step=step)
                    settled = ema is None or ema.settled(step)  # an average still full of the first weights
                    best_before = best["fid"] if best else None
                    if found := health.quick_evaluation(step, fid, best_before, coverage if settled else None):
                        report_unhealthy(found, ranks)
                    if best is None or fid < best["fid"]:
                        best = {"step": step, "fid": fid, "generator": _cpu_copy(kept)}
                    log.info("step %d: quick FID %.3f (best %.3f at step %d)", step, fid, best["fid"], best["step"])
                if checkpoint_due:
                    if ranks.is_node_main:
                        checkpoint()
                    checkpointed = step
                # Every rank stops with rank 0, which alone runs the quick evaluation.
                if cfg.stop_unhealthy and end_of_epoch and distributed.share(str(health.finding or ""), ranks):
                    log.warning(
                        "step %d: stopping early (train.stop_unhealthy), keeping the best generator so far", step
                    )
                    break

        distributed.broadcast_buffers([generator, discriminator], ranks)
        distributed.check_identical([generator, discriminator], ranks)
        trained = step - first_step
        images_per_second = trained * cfg.batch_size / (time.perf_counter() - started) if trained else 0.0
        # Rank 0's choice (it alone measured the quick FID), so that every host saves the same generator.
        chosen = distributed.share_object(best or {"step": step, "fid": None, "generator": _cpu_copy(kept)}, ranks)
        history = history[:step]  # less than the schedule when stopped early
        final = dict(zip(METRICS, history[-1].tolist(), strict=True))
        finding = distributed.share(str(health.finding or ""), ranks) or None
        result = TrainResult(
            run_id, step, resumed_from, final, images_per_second, chosen["step"], chosen["fid"], finding
        )
        if ranks.is_node_main:
            save_outputs(paths, params, result, chosen["generator"], _cpu_copy(discriminator), history, fids)
        if ranks.is_main:
            log_outputs(paths, result, trained, healthy=health.finding is None)
    if ranks.distributed:
        torch.distributed.destroy_process_group()
    return result


def save_outputs(
    paths: Paths,
    params: Params,
    result: TrainResult,
    generator: dict[str, torch.Tensor],
    discriminator: dict[str, torch.Tensor],
    history: torch.Tensor,
    fids: list[tuple[int, float]],
) -> None:
    """The chosen generator and the last discriminator, the per-step losses, the quick FIDs, the result."""
    save_weights(paths, generator, discriminator, params, result.best_step)
    write_csv(
        paths.reports / "losses.csv", ["step", *METRICS], ((s, *row) for s, row in enumerate(history.tolist(), 1))
    )
    write_csv(paths.reports / "fid.csv", ["step", "fid_quick"], fids)
    write_json_atomic(paths.reports / "train.json", dataclasses.asdict(result))


def log_outputs(paths: Paths, result: TrainResult, trained: int, healthy: bool) -> None:
    """The run's closing metrics, its health when nothing was found, and the saved weights."""
    if trained:
        mlflow.log_metric("images_per_second", result.images_per_second, step=result.steps)
    if result.best_fid is not None:
        mlflow.log_metrics({"best_fid_quick": result.best_fid, "best_step": result.best_step})
    if healthy:
        mlflow.set_tag("health", "healthy")
        mlflow.log_metric("unhealthy", 0, step=result.steps)
    for path in (paths.models / "generator.safetensors", paths.models / "discriminator.safetensors"):
        mlflow.log_artifact(str(path), artifact_path="weights")


def report_unhealthy(finding: Finding, ranks: Ranks) -> None:
    """Say so while the run goes: a warning, and on the MLflow run the tags `health` (the kind, to filter on) and
    `health.evidence`, and the metric `unhealthy` = 1 at the step."""
    if ranks.is_main:
        log.warning("training looks unhealthy: %s", finding)
        mlflow.set_tags({"health": finding.kind, "health.evidence": str(finding)})
        mlflow.log_metric("unhealthy", 1, step=finding.step)


def check_finite(values: torch.Tensor, first: int, checkpoint: Path, checkpointed: int) -> None:
    """Stop at the first step whose METRICS (rows of `values`, from step first + 1) hold a NaN or an Inf."""
    finite = torch.isfinite(values)
    if finite.all():
        return
    row = int((~finite.all(dim=1)).nonzero()[0])
    bad = {
        name: value
        for name, value, ok in zip(METRICS, values[row].tolist(), finite[row].tolist(), strict=True)
        if not ok
    }
    kept = f"{checkpoint} (step {checkpointed}) is kept" if checkpointed else "no checkpoint was written"
    raise TrainingDiverged(
        f"training diverged at step {first + 1 + row}: {bad} is not finite. Stopped; the last good checkpoint "
        f"{kept}. Lower train.lr or try another seed."
    )


def log_sample_grid(generator: Generator, z: torch.Tensor, epoch: int) -> None:
    mlflow.log_image(sample_grid(generator, z).numpy(), key="samples", step=epoch)


def _cpu_copy(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in net.state_dict().items()}


def save_weights(
    paths: Paths, generator: dict[str, torch.Tensor], discriminator: dict[str, torch.Tensor], params: Params, step: int
) -> None:
    for name, state in (("generator", generator), ("discriminator", discriminator)):
        save_tensors(state, paths.models / f"{name}.safetensors", {"params": params.flat(), "step": step})


def write_csv(path: Path, header: list[str], rows: Iterable[Sequence[float]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[0], *(f"{v:.6g}" for v in row[1:])])
    write_bytes_atomic(path, out.getvalue().encode())
