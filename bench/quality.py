"""Does the fast path train as well as plain fp32? The quick FID (classifier features, 2,000 samples against the
test set) of the same run trained each way, at every epoch, for each seed; and the mean over seeds of the last one.

    python bench/quality.py [--epochs 3] [--variants fp32 fast] [--seeds 0 1 2] [--json]

A GAN's early trajectory is chaotic (a last-bit change at step 1 ends in another FID), so one seed per variant
shows little: compare the means over seeds against the spread between seeds.

Variants: fp32 (float32, NCHW: the plain way), fast (this machine's defaults: train.precision=auto,
train.channels_last=true), bf16 (bf16 autocast, channels_last). Each trains the seed model from the same seed on
the prepared data (data/prepared, of any train_limit: an epoch is its number of images / 128 steps) in a
temporary project with its own MLflow store, with the project's classifier (models/classifier.safetensors).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dcgan.config import DataParams, Params, Paths, load_params
from dcgan.data import load_prepared
from dcgan.train import train

VARIANTS = {
    "fp32": {"train.precision": "fp32", "train.channels_last": False},
    "fast": {},
    "bf16": {"train.precision": "bf16", "train.channels_last": True},
}


def run(variant: str, params: Params, project: Paths) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"quality-{variant}-") as tmp:
        paths = Paths(Path(tmp))
        paths.models.mkdir()
        shutil.copytree(project.prepared, paths.prepared)
        shutil.copy(project.models / "classifier.safetensors", paths.models)
        shutil.copytree(project.raw("mnist"), paths.raw("mnist"))  # hashed into the run's tags
        started = time.perf_counter()
        result = train(params, paths)
        with open(paths.reports / "fid.csv") as f:
            fids = {int(row["step"]): float(row["fid_quick"]) for row in csv.DictReader(f)}
    return {
        "fid_quick": fids,
        "train_s": round(time.perf_counter() - started),
        "images_per_second": round(result.images_per_second, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["fp32", "fast"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    project = Paths()
    n_images = len(load_prepared(project, "train", DataParams())[0])
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in args.seeds:
        results[seed] = {}
        for variant in args.variants:
            overrides = {"seed": seed, "train.epochs": args.epochs, "data.train_limit": n_images, **VARIANTS[variant]}
            results[seed][variant] = run(variant, load_params(overrides=overrides), project)
            print(json.dumps({"seed": seed, "variant": variant, **results[seed][variant]}), file=sys.stderr)
    last_step = max(results[args.seeds[0]][args.variants[0]]["fid_quick"])
    final = {v: [results[s][v]["fid_quick"][last_step] for s in args.seeds] for v in args.variants}
    means = {v: round(statistics.mean(final[v]), 1) for v in args.variants}
    first, *others = args.variants
    summary = {
        "benchmark": "quality",
        "seeds": args.seeds,
        "steps": last_step,
        "train_images": n_images,
        "runs": results,
        "final_fid_quick": final,
        "mean_final_fid_quick": means,
        "mean_relative_to_" + first: {v: round(means[v] / means[first] - 1, 3) for v in others},
    }
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
