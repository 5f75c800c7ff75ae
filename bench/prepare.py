"""`prepare` on a real data set (the real function): its time, the bytes it leaves on disk, and the time to load
and scale the whole training set as `train` does.

    python bench/prepare.py --raw ../shared/data/mnist [--dataset mnist] [--image-size 64] [--repeat 3] [--json]
    python bench/prepare.py --dataset cifar10 --synthetic [--image-size 64]

`--raw` is a folder of the data set's files as `dcgan fetch` leaves them (for MNIST, raw or .gz IDX files).
`--synthetic` writes a CIFAR-10 binary archive of the published size (50,000 + 10,000 records of random pixels)
instead: no CIFAR-10 is on these machines, and its size on disk depends only on the counts. Works in a temporary
folder; prints medians of the repeats (one JSON line with --json).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dcgan.config import DataParams, Params, Paths
from dcgan.data import load_prepared, prepare
from dcgan.data.cifar import ARCHIVE, MEMBERS, RECORD
from dcgan.data.published import gunzip


def synthetic_cifar(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    with tarfile.open(folder / ARCHIVE, "w:gz", compresslevel=1) as tar:
        for name in [*MEMBERS["train"], *MEMBERS["test"]]:
            records = rng.integers(0, 256, (10_000, RECORD), dtype=np.uint8)
            records[:, 0] %= 10
            info = tarfile.TarInfo(name)
            info.size = records.nbytes
            tar.addfile(info, io.BytesIO(records.tobytes()))


def disk_bytes(folder: Path) -> int:
    """Bytes allocated on disk, as `du` counts them."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "kmnist", "cifar10"])
    parser.add_argument("--synthetic", action="store_true", help="a generated CIFAR-10 archive of the real size")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.raw and not (args.synthetic and args.dataset == "cifar10"):
        parser.error("give --raw, or --synthetic with --dataset cifar10")

    data = DataParams(dataset=args.dataset, image_size=args.image_size)
    params = Params(data=data)
    prepare_times, load_times, counts = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(Path(tmp))
        raw = paths.raw(args.dataset)
        if args.synthetic:
            synthetic_cifar(raw)
        elif args.dataset == "mnist":  # stored uncompressed, as `dcgan fetch` leaves it
            raw.mkdir(parents=True)
            for file in args.raw.glob("*-ubyte*"):
                (raw / file.name.removesuffix(".gz")).write_bytes(gunzip(file.read_bytes(), str(file)))
        else:
            shutil.copytree(args.raw, raw)
        for _ in range(args.repeat):
            start = time.perf_counter()
            counts = prepare(params, paths).counts
            prepare_times.append(time.perf_counter() - start)
        for _ in range(args.repeat):
            start = time.perf_counter()
            images, _ = load_prepared(paths, "train", data)
            load_times.append(time.perf_counter() - start)
        prepared = disk_bytes(paths.prepared)
        float32 = sum(counts.values()) * (images[0].numel() * 4 + 8)  # the layout before: float32, int64 labels
    result = {
        "benchmark": "prepare",
        "dataset": args.dataset + (" (synthetic, real size)" if args.synthetic else ""),
        "image_size": args.image_size,
        "images": counts,
        "repeat": args.repeat,
        "prepare_median_s": round(statistics.median(prepare_times), 2),
        "load_train_median_s": round(statistics.median(load_times), 2),  # read, to float32 in [-1, 1]
        "prepared_disk_mb": round(prepared / 1e6, 1),
        "float32_layout_mb": round(float32 / 1e6, 1),  # float32 images and int64 labels, headers aside
        "ratio_to_float32": round(prepared / float32, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
