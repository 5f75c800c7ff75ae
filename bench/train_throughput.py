"""Images per second of the project's real training step (dcgan.train.train_step) on the seed model.

    python bench/train_throughput.py [--steps 20] [--warmup 3] [--batch 128] [--precision auto] [--device auto] [--json]

Random data resident on the device stands in for MNIST, so this measures the step alone.
Prints one JSON line with --json: median images/s over the timed steps, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from dcgan.config import ModelParams, TrainParams
from dcgan.models import build_models
from dcgan.train import resolve_device, resolve_precision, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    cfg = TrainParams()
    torch.manual_seed(0)
    generator, discriminator = (net.to(device) for net in build_models(ModelParams(), args.image_size))
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
    real = torch.rand(args.batch, 1, args.image_size, args.image_size, device=device) * 2 - 1
    z = torch.randn(args.batch, ModelParams().z_dim, 1, 1, device=device)

    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        train_step(generator, discriminator, opt_g, opt_d, real, z, dtype).cpu()  # .cpu() waits for the device
        if i >= args.warmup:
            times.append(time.perf_counter() - start)

    median = statistics.median(times)
    result = {
        "benchmark": "train_step",
        "device": str(device),
        "precision": str(dtype or "fp32").removeprefix("torch."),
        "batch": args.batch,
        "image_size": args.image_size,
        "steps": args.steps,
        "median_step_s": round(median, 4),
        "images_per_second": round(args.batch / median, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
