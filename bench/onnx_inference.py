"""Generator throughput under ONNX Runtime (CPU provider) against torch eager fp32 on the CPU, and batch-1 latency.

    python bench/onnx_inference.py [--batch 64] [--repeat 20] [--json]

Exports the seed generator (freshly initialised: speed does not depend on the weights) to a temporary ONNX file
with the project's own export, then times both alternately: median seconds per call after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from dcgan.config import ModelParams
from dcgan.export import to_onnx
from dcgan.models import build_models


def _median_s(call: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = build_models(ModelParams(), 64, 1)[0].eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.onnx"
        to_onnx(generator, torch.randn(2, 100, 1, 1), path, 20, ("z", "images"))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    result: dict[str, object] = {"benchmark": "onnx_inference", "batch": args.batch}
    for batch, label in ((args.batch, "batch"), (1, "batch1")):
        z = torch.randn(batch, 100, 1, 1)
        z_np = z.numpy()
        with torch.no_grad():
            torch_s = _median_s(lambda z=z: generator(z), args.repeat)
        ort_s = _median_s(lambda z_np=z_np: session.run(None, {"z": z_np}), args.repeat)
        result[f"torch_{label}_s"] = round(torch_s, 5)
        result[f"onnxruntime_{label}_s"] = round(ort_s, 5)
        if label == "batch":
            result["torch_images_per_second"] = round(batch / torch_s, 1)
            result["onnxruntime_images_per_second"] = round(batch / ort_s, 1)
            result["onnxruntime_speedup"] = round(torch_s / ort_s, 2)
    result.update(torch=torch.__version__, onnxruntime=ort.__version__, threads=torch.get_num_threads())
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
