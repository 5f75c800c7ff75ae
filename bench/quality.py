"""Time to quality: the quick FID (classifier features of evaluate.quick_samples samples against the test set,
lower is better) at every epoch of a run, against seconds of training and against images seen.

    python bench/quality.py --variants seed ema --seeds 0 1 2 [--epochs 3] [--plot PNG] [--json]
    python bench/quality.py --sweep NAME [NAME ...] [--plot PNG] [--json]   # the members of `dcgan sweep`s instead

With --variants, each variant trains the seed model from each seed in a temporary project (the project's
data/prepared and models/classifier.safetensors, its own MLflow store). With --sweep, the members' runs in the
project's MLflow store are read as they are: a sweep is how to measure settings that need their own prepared
data, such as the CPU preset's 32 x 32 images. Either way, each point's seconds are its MLflow timestamp minus the
run's start (so they include the quick evaluations themselves), and images seen are steps x batch size.

Variants: seed (the seed configuration with this machine's defaults: fp32, channels_last), fp32 (float32, NCHW:
the plain way), bf16 (bf16 autocast, channels_last), ema (train.ema_decay 0.999 with a 500-step warm-up).
A GAN's early trajectory is chaotic, so compare the means over seeds against the spread between seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from dcgan import tracking
from dcgan.config import DataParams, Params, Paths, load_params
from dcgan.data import load_prepared
from dcgan.sweep import describe
from dcgan.train import train

VARIANTS: dict[str, dict[str, Any]] = {
    "seed": {},
    "fp32": {"train.precision": "fp32", "train.channels_last": False},
    "bf16": {"train.precision": "bf16", "train.channels_last": True},
    "ema": {"train.ema_decay": 0.999, "train.ema_warmup": 500},
}


def curve(client: mlflow.MlflowClient, run_id: str) -> list[dict[str, float]]:
    """The run's quick FIDs: [{"step", "seconds", "images", "fid_quick"}, ...] in step order."""
    run = client.get_run(run_id)
    batch = int(run.data.params["train.batch_size"])
    history = sorted(client.get_metric_history(run_id, "fid_quick"), key=lambda m: m.step)
    return [
        {"step": m.step, "seconds": round((m.timestamp - run.info.start_time) / 1000, 1), "images": m.step * batch,
         "fid_quick": round(m.value, 2)}
        for m in history
    ]  # fmt: skip


def train_variant(params: Params, project: Paths) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        paths = Paths(Path(tmp))
        paths.models.mkdir()
        shutil.copytree(project.prepared, paths.prepared)
        shutil.copy(project.models / "classifier.safetensors", paths.models)
        shutil.copytree(project.raw("mnist"), paths.raw("mnist"))  # hashed into the run's tags
        run_id = train(params, paths).run_id
        return curve(mlflow.MlflowClient(tracking.tracking_uri(paths)), run_id)


def from_sweep(name: str, project: Paths) -> dict[str, dict[str, list[dict[str, float]]]]:
    """{grid point: {seed: curve}} of the sweep's members that finished."""
    client = mlflow.MlflowClient(tracking.tracking_uri(project))
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.sweep = '{name}' and attributes.status = 'FINISHED'",
    )
    curves: dict[str, dict[str, list[dict[str, float]]]] = {}
    for run in runs:
        if run.data.tags.get("sweep.role") == "parent":
            continue
        overrides = json.loads(run.data.tags["sweep.overrides"])
        seed = str(overrides.pop("seed"))
        point = describe(dict(sorted(overrides.items())))
        curves.setdefault(point, {})[seed] = curve(client, run.info.run_id)
    if not curves:
        raise SystemExit(f"no finished member runs of a sweep named {name!r} in {tracking.tracking_uri(project)}")
    return curves


def summarize(curves: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    """Per variant: the last point of each seed, and the median over seeds of its quick FID and seconds."""
    summary = {}
    for variant, seeds in curves.items():
        last = [points[-1] for points in seeds.values() if points]
        summary[variant] = {
            "seeds": sorted(seeds),
            "steps": [p["step"] for p in last],
            "median_final_fid_quick": round(statistics.median(p["fid_quick"] for p in last), 2),
            "median_seconds": round(statistics.median(p["seconds"] for p in last)),
        }
    return summary


def plot(curves: dict[str, dict[str, list[dict[str, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_images) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.get_cmap("tab10")
    for i, (variant, seeds) in enumerate(curves.items()):
        for j, (_, points) in enumerate(sorted(seeds.items())):
            label = variant if j == 0 else None
            style = {"color": colours(i % 10), "marker": "o", "alpha": 0.8, "label": label}
            by_time.plot([p["seconds"] / 60 for p in points], [p["fid_quick"] for p in points], **style)
            by_images.plot([p["images"] / 1000 for p in points], [p["fid_quick"] for p in points], **style)
    by_time.set(xlabel="minutes of training", ylabel="quick FID (lower is better)", yscale="log")
    by_images.set(xlabel="thousands of images seen")
    by_time.legend(fontsize=8)
    figure.suptitle("Time to quality (one line per seed)")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", nargs="+", help="read the members of these `dcgan sweep`s instead of training")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["seed", "ema"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    project = Paths()
    if args.sweep:
        curves = {point: seeds for name in args.sweep for point, seeds in from_sweep(name, project).items()}
    else:
        n_images = len(load_prepared(project, "train", DataParams())[0])
        curves = {variant: {} for variant in args.variants}
        for seed in args.seeds:
            for variant in args.variants:
                overrides = {
                    "seed": seed,
                    "train.epochs": args.epochs,
                    "data.train_limit": n_images,
                    **VARIANTS[variant],
                }
                curves[variant][str(seed)] = train_variant(load_params(overrides=overrides), project)
                print(
                    json.dumps({"variant": variant, "seed": seed, "curve": curves[variant][str(seed)]}), file=sys.stderr
                )
    if args.plot:
        plot(curves, args.plot)
    result = {"benchmark": "quality", "summary": summarize(curves), "curves": curves}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
