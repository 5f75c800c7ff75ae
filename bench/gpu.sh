#!/usr/bin/env bash
# The GPU check, one command, under 10 minutes (its timeouts add up to 560 s), installing nothing (run `make setup` first, or use a
# Python that has the project's dependencies):  bash bench/gpu.sh [MNIST_DIR]
#   1. bench/train_throughput.py on the GPU: the project's step against the canonical loop, alternately
#      (bf16 autocast, channels_last, fused Adam), then the project's step with torch.compile;
#   2. the seed's full run: 30 epochs of all 60,000 images at batch 128 (`dcgan train`, quick FID off),
#      timed, in a temporary project;
#   3. that run's quality, the first time it is measured: `dcgan classifier`, then `dcgan evaluate` (FID, IS,
#      digits covered, precision and recall on 10,000 samples);
# and prints a short table. Record its figures in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || command -v python3 )}
MNIST=$(realpath "${1:-${DCGAN_MNIST_DIR:-../shared/data/mnist}}")
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI= DVC_NO_ANALYTICS=1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

# The seed's data, prepared once in a temporary project (also what the canonical loop reads).
project=$out/project
mkdir -p "$project"
cp params.yaml "$project/"
(cd "$project" && timeout 20 "$PY" -m dcgan fetch -S "data.source_dir=$MNIST" >/dev/null \
  && timeout 40 "$PY" -m dcgan prepare >/dev/null)

timeout 90 "$PY" bench/train_throughput.py --device cuda --steps 100 --rounds 3 --mnist "$project/data/raw/mnist" \
  --json | tee "$out/throughput.json"
timeout 100 "$PY" bench/train_throughput.py --device cuda --steps 100 --rounds 3 --loop project --compile \
  --json | tee "$out/compiled.json"

# The seed run itself: 30 epochs x 468 steps; training time as `train` measures it, and the command's wall time.
start=$(date +%s%N)
(cd "$project" && timeout 100 "$PY" -m dcgan train -S evaluate.every_epochs=0 -S train.log_every=100 \
  >"$out/train.json" 2>"$out/train.log") || { tail -20 "$out/train.log"; exit 1; }
echo "{\"wall_ms\": $(( ($(date +%s%N) - start) / 1000000 ))}" >"$out/wall.json"
(cd "$project" && timeout 90 "$PY" -m dcgan classifier >/dev/null 2>"$out/evaluate.log" \
  && timeout 120 "$PY" -m dcgan evaluate >/dev/null 2>>"$out/evaluate.log") || { tail -20 "$out/evaluate.log"; exit 1; }
cp "$project/reports/metrics.json" "$out/metrics.json"

"$PY" - "$out" <<'PYTHON'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
t = json.loads((out / "throughput.json").read_text())
c = json.loads((out / "compiled.json").read_text())
r = json.loads((out / "train.json").read_text())
wall = json.loads((out / "wall.json").read_text())["wall_ms"] / 1000
m = json.loads((out / "metrics.json").read_text())
ips = t["images_per_second"]
rows = [
    ("GPU", t["device"]),
    ("canonical loop, images/s", ips["canonical"]),
    (f"project step ({t['precision']}, channels_last), images/s", ips["project"]),
    ("  ratio to canonical", t["ratio"]),
    ("project step + torch.compile, images/s", c["images_per_second"]["project"]),
    ("  ratio to canonical", round(c["images_per_second"]["project"] / ips["canonical"], 2)),
    ("peak CUDA memory (project / canonical), MiB", f"{t['peak_cuda_mib']['project']} / {t['peak_cuda_mib']['canonical']}"),
    (f"seed run: {r['steps']} steps, training images/s", round(r["images_per_second"], 1)),
    ("seed run: training time, s", round(r["steps"] * 128 / r["images_per_second"], 1)),
    ("seed run: `dcgan train` wall time, s", round(wall, 1)),
    ("seed run: FID / IS (real images: FID, IS)", f"{m['fid']:.2f} / {m['inception_score']:.2f} ({m['real_fid']:.2f}, {m['real_inception_score']:.2f})"),
    ("seed run: digits covered, precision / recall", f"{m['digits_covered']} of 10, {m['precision']:.3f} / {m['recall']:.3f}"),
]
width = max(len(name) for name, _ in rows)
for name, value in rows:
    print(f"{name:<{width}}  {value}")
PYTHON
