"""The training loop, read top to bottom: the seed's DCGAN step, checkpoints, MLflow.

data/prepared/train.safetensors -> models/{generator,discriminator}.safetensors
                                   models/checkpoints/last.pt   (resumed when the params match)
                                   reports/losses.csv           (per-step losses, a DVC plot)
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dcgan import tracking
from dcgan.checkpoint import load_checkpoint, resume_mismatch, save_checkpoint
from dcgan.config import Params, Paths
from dcgan.data import epoch_order, load_prepared
from dcgan.errors import DcganError
from dcgan.evaluate import FidTracker
from dcgan.files import write_bytes_atomic
from dcgan.models import Discriminator, Generator, build_models
from dcgan.pictures import sample_grid
from dcgan.tensors import save_tensors

log = logging.getLogger(__name__)

METRICS = ("loss_d", "loss_g", "d_real", "d_fake")
GRID_SIZE = 64

ProgressHook = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    steps: int
    resumed_from: int  # 0 for a fresh run
    final: dict[str, float]  # the last step's METRICS
    images_per_second: float
    best_step: int  # the step of the saved generator: the best by quick FID, else the last
    best_fid: float | None  # its quick FID (None when evaluate.every_epochs is 0)


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DcganError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    'auto' takes bf16 on a CUDA device that has it. On the CPU it stays fp32: bf16 autocast measured slower
    than fp32 for this model on our AVX512-BF16 CPUs (docs/benchmarks.md).
    """
    if choice == "bf16" or (choice == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[None]:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_step(
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """One step of the seed: D on a real and a fake batch, then G with the non-saturating loss.

    Returns the detached METRICS as one tensor, so that the caller decides when to sync with the host.
    """
    ones = torch.ones(len(real), device=real.device)
    zeros = torch.zeros(len(real), device=real.device)

    # (1) D: maximise log D(x) + log(1 - D(G(z))). Real and fake go through D separately, as in the
    # seed, so that each BatchNorm batch holds one kind of image.
    with autocast(real.device, dtype):
        fake = generator(z)  # B x 1 x S x S
        logits_real = discriminator(real)  # B
        logits_fake = discriminator(fake.detach())  # B
        loss_d = F.binary_cross_entropy_with_logits(logits_real, ones) + F.binary_cross_entropy_with_logits(
            logits_fake, zeros
        )
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # (2) G: maximise log D(G(z)) (the non-saturating loss), against the D just updated.
    with autocast(real.device, dtype):
        loss_g = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()

    d_real, d_fake = torch.sigmoid(logits_real.detach()).mean(), torch.sigmoid(logits_fake.detach()).mean()
    return torch.stack([loss_d.detach(), loss_g.detach(), d_real, d_fake]).float()


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
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    images, _ = load_prepared(paths, "train", params.data.image_size)
    images = images.to(device)  # N x 1 x S x S, resident on the device: no DataLoader
    steps_per_epoch = len(images) // cfg.batch_size  # the last partial batch is dropped (BatchNorm)
    total_steps = cfg.epochs * steps_per_epoch
    log.info("device %s, precision %s, %d steps of %d images", device, dtype or "fp32", total_steps, cfg.batch_size)

    torch.manual_seed(params.seed)
    generator, discriminator = build_models(params.model, params.data.image_size)
    generator.to(device)
    discriminator.to(device)
    fused = device.type == "cuda"
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused)
    noise = torch.Generator(device).manual_seed(params.seed)
    # The grid's latents come from their own RNG so that a resumed run shows the same digits.
    fixed_z = torch.randn(GRID_SIZE, params.model.z_dim, 1, 1, generator=torch.Generator().manual_seed(params.seed))
    fixed_z = fixed_z.to(device)
    history = torch.zeros(total_steps, len(METRICS))  # per-step METRICS, kept in the checkpoint
    # Every evaluate.every_epochs, a quick FID; the generator with the best one is the one saved and exported.
    fid_tracker = FidTracker(params, paths, device) if params.evaluate.every_epochs else None
    fids: list[tuple[int, float]] = []  # (step, quick FID)
    best: dict[str, Any] | None = None  # {"step", "fid", "generator": state dict on the CPU}

    step, run_id = 0, None
    last = paths.checkpoints / "last.pt"
    if last.exists():
        state = load_checkpoint(last)
        mismatch = resume_mismatch(state, params)
        if state["step"] >= total_steps:
            mismatch.append(f"it finished at step {state['step']}, this run has {total_steps} steps")
        if mismatch:
            log.warning("%s: not resuming (%s): training from scratch", last, "; ".join(mismatch))
        else:
            generator.load_state_dict(state["generator"])
            discriminator.load_state_dict(state["discriminator"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            noise.set_state(state["noise_rng"])
            step, run_id = state["step"], state["mlflow_run_id"]
            history[:step] = state["history"]
            fids, best = [(int(s), f) for s, f in state["fids"].tolist()], state["best"]
            log.warning("%s: resuming at step %d of %d", last, step, total_steps)
    resumed_from = step

    def checkpoint() -> None:
        save_checkpoint(
            last,
            {
                "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "noise_rng": noise.get_state(),
                "step": step,
                "history": history[:step].clone(),
                "fids": torch.tensor(fids, dtype=torch.float64).reshape(-1, 2),
                "best": best,
                "params": params.flat(),
                "mlflow_run_id": run_id,
            },
        )

    with tracking.training_run(params, paths, run_id, run_tags) as run_id:
        generator.train()
        discriminator.train()
        pending = []  # (step, metrics on the device) not yet logged: one host sync per log_every steps
        started, first_step = time.perf_counter(), step
        order = epoch_order(len(images), params.seed, step // steps_per_epoch).to(device)
        with tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0) as bar:
            while step < total_steps:
                epoch, i = divmod(step, steps_per_epoch)
                if i == 0:
                    order = epoch_order(len(images), params.seed, epoch).to(device)
                real = images[order[i * cfg.batch_size : (i + 1) * cfg.batch_size]]  # B x 1 x S x S
                z = torch.randn(cfg.batch_size, params.model.z_dim, 1, 1, generator=noise, device=device)
                pending.append(train_step(generator, discriminator, opt_g, opt_d, real, z, dtype))
                step += 1
                bar.update()

                end_of_epoch = step % steps_per_epoch == 0
                if step % cfg.log_every == 0 or end_of_epoch or step == total_steps:
                    values = torch.stack(pending).cpu()  # the host sync
                    first = step - len(pending)
                    history[first:step] = values
                    rows = [(first + 1 + k, dict(zip(METRICS, v, strict=True))) for k, v in enumerate(values.tolist())]
                    tracking.log_step_metrics(run_id, rows)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in rows[-1][1].items()}, refresh=False)
                    pending.clear()
                    if on_progress:
                        on_progress(step, total_steps, rows[-1][1])
                if end_of_epoch:
                    log_sample_grid(generator, fixed_z, epoch + 1)
                if (
                    fid_tracker
                    and end_of_epoch
                    and ((epoch + 1) % params.evaluate.every_epochs == 0 or step == total_steps)
                ):
                    fid = fid_tracker(generator)
                    fids.append((step, fid))
                    mlflow.log_metric("fid_quick", fid, step=step)
                    if best is None or fid < best["fid"]:
                        best = {"step": step, "fid": fid, "generator": _cpu_copy(generator)}
                    log.info("step %d: quick FID %.3f (best %.3f at step %d)", step, fid, best["fid"], best["step"])
                if end_of_epoch or step % cfg.checkpoint_every == 0 or step == total_steps:
                    checkpoint()

        trained = step - first_step
        images_per_second = trained * cfg.batch_size / (time.perf_counter() - started) if trained else 0.0
        if trained:
            mlflow.log_metric("images_per_second", images_per_second, step=step)
        chosen = best or {"step": step, "fid": None, "generator": _cpu_copy(generator)}
        save_weights(paths, chosen["generator"], _cpu_copy(discriminator), params, chosen["step"])
        write_csv(
            paths.reports / "losses.csv", ["step", *METRICS], ((s, *row) for s, row in enumerate(history.tolist(), 1))
        )
        write_csv(paths.reports / "fid.csv", ["step", "fid_quick"], fids)
        if chosen["fid"] is not None:
            mlflow.log_metrics({"best_fid_quick": chosen["fid"], "best_step": chosen["step"]})
        for path in (paths.models / "generator.safetensors", paths.models / "discriminator.safetensors"):
            mlflow.log_artifact(str(path), artifact_path="weights")

    final = dict(zip(METRICS, history[-1].tolist(), strict=True))
    return TrainResult(run_id, step, resumed_from, final, images_per_second, chosen["step"], chosen["fid"])


def log_sample_grid(generator: Generator, z: torch.Tensor, epoch: int) -> None:
    mlflow.log_image(sample_grid(generator, z).numpy(), key="samples", step=epoch)


def _cpu_copy(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


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
