"""Evaluation of the trained generator, as it will be exported (eval mode, BatchNorm running statistics).

models/generator.safetensors + reports/losses.csv -> reports/samples.png, reports/metrics.json
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass

import mlflow
import torch

from dcgan import tracking
from dcgan.config import Params, Paths
from dcgan.errors import DcganError
from dcgan.files import write_json_atomic
from dcgan.models import load_generator
from dcgan.pictures import sample_grid, save_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, float]


def evaluate(params: Params, paths: Paths) -> EvaluateResult:
    generator = load_generator(paths.models / "generator.safetensors", params.model, params.data.image_size)
    rng = torch.Generator().manual_seed(params.seed)
    z = torch.randn(params.evaluate.n_samples, params.model.z_dim, 1, 1, generator=rng)
    samples_png = paths.reports / "samples.png"
    save_png(sample_grid(generator, z[:64]), samples_png)

    metrics = {f"final_{name}": value for name, value in final_losses(paths).items()}
    write_json_atomic(paths.reports / "metrics.json", metrics)
    with tracking.pipeline_run(paths):
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(samples_png), artifact_path="evaluation")
    log.info("%s: %s", paths.reports / "metrics.json", metrics)
    return EvaluateResult(metrics)


def final_losses(paths: Paths) -> dict[str, float]:
    """The last training step's losses from reports/losses.csv."""
    path = paths.reports / "losses.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        last = rows[-1]
        return {key: float(value) for key, value in last.items() if key != "step"}
    except (OSError, IndexError, ValueError) as err:
        raise DcganError(f"{path}: no training losses ({err}): run `dcgan train` first") from None
