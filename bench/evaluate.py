"""Time of the evaluation's measurement on N generated samples (default 10,000): generation, classifier
passes and metrics, the work `dcgan evaluate` does apart from pictures and logging.

    python bench/evaluate.py [--samples 10000] [--raw data/raw/mnist] [--classifier PATH] [--json]

The classifier defaults to tests/fixtures/classifier.safetensors.

The generator is the seed architecture freshly initialised (timing does not depend on its weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from dcgan.classifier import load_classifier
from dcgan.config import EvaluateParams, ModelParams
from dcgan.data.idx import read_idx
from dcgan.data.prepare import resize_uint8, unit_range
from dcgan.evaluate import generate, measure, quality
from dcgan.models import build_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--raw", type=Path, default=Path("data/raw/mnist"))
    parser.add_argument("--classifier", type=Path, default=Path("tests/fixtures/classifier.safetensors"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    generator, _ = build_models(ModelParams(), 64, 1)
    classifier = load_classifier(args.classifier)
    test = unit_range(resize_uint8(read_idx(args.raw / "t10k-images-idx3-ubyte")[:, None], 64))
    train = unit_range(resize_uint8(read_idx(args.raw / "train-images-idx3-ubyte")[: args.samples, None], 64))
    cfg = EvaluateParams(n_samples=args.samples)

    times = {}
    start = time.perf_counter()
    fake = generate(generator, args.samples, seed=0)
    times["generate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    reference = measure(classifier, test)[0]
    times["reference_features_s"] = time.perf_counter() - start
    start = time.perf_counter()
    quality(*measure(classifier, fake), reference, cfg, seed=0)
    times["generated_metrics_s"] = time.perf_counter() - start
    start = time.perf_counter()
    quality(*measure(classifier, train), reference, cfg, seed=0)
    times["real_metrics_s"] = time.perf_counter() - start

    result = {
        "benchmark": "evaluate",
        "samples": args.samples,
        **{k: round(v, 2) for k, v in times.items()},
        "total_s": round(sum(times.values()), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
