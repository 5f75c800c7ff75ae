"""Time of `prepare` on MNIST (the real function, from data/raw/mnist) and its peak memory.

    python bench/prepare.py [--raw data/raw/mnist] [--image-size 64] [--repeat 3] [--json]

Writes into a temporary folder; prints the median of the repeats (one JSON line with --json).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dcgan.config import DataParams, Params, Paths
from dcgan.data import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("data/raw/mnist"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    params = Params(data=DataParams(image_size=args.image_size))
    times, counts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(Path(tmp))
        shutil.copytree(args.raw, paths.raw)
        for _ in range(args.repeat):
            start = time.perf_counter()
            counts = prepare(params, paths).counts
            times.append(time.perf_counter() - start)
    result = {
        "benchmark": "prepare",
        "image_size": args.image_size,
        "images": counts,
        "repeat": args.repeat,
        "median_s": round(statistics.median(times), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
