"""Images per second of the project's training step against the canonical DCGAN loop, measured alternately.

    python bench/train_throughput.py [--steps 20] [--rounds 3] [--batch 128] [--precision auto|fp32|bf16]
        [--device auto|cpu|cuda] [--channels-last/--no-channels-last] [--compile] [--loop both|project|canonical]
        [--mnist data/raw/mnist] [--json]

The project's side is `dcgan.train.train_step` on the networks `dcgan.train.build_nets` makes from the seed
params (the code `train` runs), with data resident on the device. The canonical side is bench/canonical_dcgan.py,
reading MNIST through torchvision's DataLoader. Each round times --steps steps of one loop, then of the other,
after a warm-up; the result is the median step of each loop over all rounds, as images/s, and their ratio.
Prints one JSON line with --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import canonical_dcgan  # bench/, beside this script
import torch

from dcgan.config import Params, TrainParams
from dcgan.train import build_nets, resolve_device, resolve_precision, train_step


def project_step(params: Params, device: torch.device) -> tuple[Callable[[], None], str]:
    nets = build_nets(params, device, 1)
    dtype = resolve_precision(params.train.precision, device)
    batch, size = params.train.batch_size, params.data.image_size
    images = torch.rand(8 * batch, 1, size, size, device=device) * 2 - 1  # resident, as in `train`
    noise = torch.Generator(device).manual_seed(0)
    offset = 0

    def step() -> None:
        nonlocal offset
        real = images[offset : offset + batch]
        offset = (offset + batch) % len(images)
        z = torch.randn(batch, params.model.z_dim, 1, 1, generator=noise, device=device)
        train_step(nets, real, z, dtype).cpu()  # .cpu() waits for the device, as the logging sync does

    return step, str(dtype or "fp32").removeprefix("torch.")


def canonical_step(device: torch.device, mnist: Path, batch: int) -> Callable[[], None]:
    steps = canonical_dcgan.training_steps(device, mnist, batch)
    return lambda: next(steps)  # .item() inside syncs every step


def timed(step: Callable[[], None], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=TrainParams().channels_last)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--loop", choices=["both", "project", "canonical"], default="both")
    parser.add_argument("--mnist", type=Path, default=Path("data/raw/mnist"), help="IDX files, for the canonical loop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    train = TrainParams(
        batch_size=args.batch, precision=args.precision, channels_last=args.channels_last, compile=args.compile
    )
    params = Params(train=train)
    loops: dict[str, Callable[[], None]] = {}
    precision = None
    if args.loop in ("both", "project"):
        loops["project"], precision = project_step(params, device)
    if args.loop in ("both", "canonical"):
        loops["canonical"] = canonical_step(device, args.mnist, args.batch)

    times: dict[str, list[float]] = {name: [] for name in loops}
    peak_cuda: dict[str, int] = dict.fromkeys(loops, 0)
    for step in loops.values():
        timed(step, args.warmup)  # first calls: allocator, cuDNN autotune, compile, DataLoader workers
    for _ in range(args.rounds):
        for name, step in loops.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name] += timed(step, args.steps)
            if device.type == "cuda":
                peak_cuda[name] = max(peak_cuda[name], torch.cuda.max_memory_allocated() >> 20)

    speed = {name: round(args.batch / statistics.median(t), 1) for name, t in times.items()}
    result = {
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "batch": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "images_per_second": speed,
        "ratio": round(speed["project"] / speed["canonical"], 2) if len(speed) == 2 else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_cuda_mib": peak_cuda if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
