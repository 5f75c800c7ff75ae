"""Export the generator to ONNX and check that ONNX Runtime computes what torch computes.

models/generator.safetensors -> models/generator.onnx, reports/parity.json
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import torch

from dcgan import tracking
from dcgan.config import Params, Paths
from dcgan.errors import ParityError
from dcgan.files import atomic_path, write_json_atomic
from dcgan.models import Generator, load_generator

log = logging.getLogger(__name__)

PARITY_BATCHES = (1, 7, 64)


REGISTERED_MODEL = "dcgan-generator"


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    max_abs_error: float
    provider: str
    model_uri: str  # models:/dcgan-generator/<version>


def export(params: Params, paths: Paths) -> ExportResult:
    """Write models/generator.onnx (one file, dynamic batch) only if it passes the parity check, then log it
    to the MLflow run and register it as a new version of `dcgan-generator`."""
    generator = load_generator(paths.models / "generator.safetensors", params.model, params.data.image_size)
    target = paths.models / "generator.onnx"
    with tracking.pipeline_run(paths) as run_id:
        with atomic_path(target) as tmp:
            to_onnx(generator, tmp, params.export.opset)
            model = onnx.load(tmp)
            onnx.helper.set_model_props(
                model,
                {
                    "z_dim": str(params.model.z_dim),
                    "image_size": str(params.data.image_size),
                    "value_range": "[-1, 1]",
                    "mlflow_run_id": run_id,
                },
            )
            onnx.save(model, tmp)
            onnx.checker.check_model(tmp, full_check=True)
            report = parity(generator, tmp, params.seed, params.export.parity_atol)
            write_json_atomic(paths.reports / "parity.json", report)
            mlflow.log_metric("parity_max_abs_error", report["max_abs_error"])
            if not report["passed"]:
                raise ParityError(
                    f"{target}: ONNX Runtime differs from torch by {report['max_abs_error']:.3g} "
                    f"(tolerance {params.export.parity_atol:g}); the file was not written"
                )
        version = register(onnx.load(target), params)
    model_uri = f"models:/{REGISTERED_MODEL}/{version}"
    log.info("%s: parity max abs error %.3g on %s", target, report["max_abs_error"], report["provider"])
    log.info("registered %s", model_uri)
    return ExportResult(target, report["max_abs_error"], report["provider"], model_uri)


def register(model: onnx.ModelProto, params: Params) -> str:
    """Log the ONNX model to the active run and register it; returns the new version."""
    from mlflow.models import infer_signature

    z = np.random.default_rng(params.seed).standard_normal((2, params.model.z_dim, 1, 1), dtype=np.float32)
    images = np.zeros((2, 1, params.data.image_size, params.data.image_size), dtype=np.float32)
    info = mlflow.onnx.log_model(
        model,
        name="generator",
        registered_model_name=REGISTERED_MODEL,
        signature=infer_signature(z, images),
        input_example=z,
        # Never both onnxruntime and onnxruntime-gpu: they overwrite each other's files.
        pip_requirements=[f"onnxruntime-gpu=={_version('onnxruntime-gpu')}", f"onnx=={onnx.__version__}", "numpy"],
        save_as_external_data=False,
    )
    return str(info.registered_model_version)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def to_onnx(generator: Generator, path: Path, opset: int) -> None:
    z = torch.randn(2, generator.z_dim, 1, 1)
    program = torch.onnx.export(
        generator.eval(),
        (z,),
        input_names=["z"],
        output_names=["images"],
        dynamic_shapes={"z": {0: torch.export.Dim("batch")}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)


def parity(generator: Generator, path: Path, seed: int, atol: float) -> dict:
    """Max abs error between torch (fp32, CPU) and ONNX Runtime's CPU provider on seeded latents."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = torch.Generator().manual_seed(seed)
    errors = {}
    for batch in PARITY_BATCHES:
        z = torch.randn(batch, generator.z_dim, 1, 1, generator=rng)
        with torch.no_grad():
            expected = generator(z).numpy()
        (actual,) = session.run(["images"], {"z": z.numpy()})
        errors[str(batch)] = float(np.abs(actual - expected).max())
    worst = max(errors.values())
    return {
        "provider": session.get_providers()[0],
        "max_abs_error": worst,
        "max_abs_error_by_batch": errors,
        "tolerance": atol,
        "passed": worst <= atol,
    }
