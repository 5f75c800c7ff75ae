"""Export the generator to ONNX, check that ONNX Runtime computes what torch computes, register and promote it.

models/generator.safetensors -> models/generator.onnx, reports/parity.json,
models/classifier.safetensors -> models/classifier.onnx (for pages that label samples: `dcgan web`),
                                a new version of the data set's registered model (`dcgan-generator` for MNIST,
                                `dcgan-generator-<dataset>` for the others) in the MLflow registry (alias
                                `champion` when it passed parity and beats that champion's FID)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import torch
from mlflow.exceptions import MlflowException

from dcgan import model_card, tracking
from dcgan.classifier import Classifier, load_classifier
from dcgan.config import Params, Paths
from dcgan.data import prepared_info
from dcgan.errors import ParityError
from dcgan.evaluate import FidTracker, as_exported
from dcgan.files import atomic_path, read_json_number, write_json_atomic
from dcgan.models import Generator, load_generator

log = logging.getLogger(__name__)

REGISTERED_MODEL = "dcgan-generator"  # MNIST's; other data sets append their name
CHAMPION = "champion"
PARITY_BATCHES = (1, 7, 64)


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    max_abs_error: float
    provider: str
    model_uri: str  # models:/<registered model>/<version>
    promotion: str  # whether it became the champion, and why


def registered_model(dataset: str) -> str:
    """The registry name of a data set's generator, so that one data set's champion never replaces another's."""
    return REGISTERED_MODEL if dataset == "mnist" else f"{REGISTERED_MODEL}-{dataset}"


def export(params: Params, paths: Paths) -> ExportResult:
    """Write models/generator.onnx (one file, dynamic batch) only if it passes the parity check, log it to the
    pipeline's MLflow run, register it as a new version of the data set's model, and promote it if it is better."""
    info = prepared_info(paths, params.data)
    trained = load_generator(
        paths.models / "generator.safetensors", params.model, params.data.image_size, info.channels
    )
    fid = read_json_number(paths.reports / "metrics.json", "fid", "evaluate")
    with tracking.pipeline_run(paths) as run_id:
        # BatchNorm's running statistics from training against re-estimated ones, measured the same way.
        tracker = FidTracker(params, paths, torch.device("cpu"))
        fid_stale = tracker(trained, as_is=True)
        generator = as_exported(trained, params)
        fid_recalibrated = tracker(generator, as_is=True)
        mlflow.log_metrics(
            {"export_fid_quick_bn_training": fid_stale, "export_fid_quick_bn_recalibrated": fid_recalibrated}
        )
        log.info("quick FID with BatchNorm statistics of training %.3f, re-estimated %.3f", fid_stale, fid_recalibrated)

        target = paths.models / "generator.onnx"
        report = export_checked(generator, target, params, paths, run_id)
        if params.export.fp16:
            half_target = paths.models / "generator_fp16.onnx"
            report["fp16"] = export_checked(generator, half_target, params, paths, run_id, half=True)
            mlflow.log_artifact(str(half_target), artifact_path="onnx")
        report["classifier"] = export_classifier(params, paths)
        mlflow.log_artifact(str(paths.models / "classifier.onnx"), artifact_path="onnx")
        write_json_atomic(paths.reports / "parity.json", report)
        name = registered_model(params.data.dataset)
        version = register(onnx.load(target), name, params, info.channels)
        promotion = promote(name, version, fid)
        mlflow.set_tag("registry.promotion", promotion)
        write_cards(name, version, params, paths, run_id, report)
    model_uri = f"models:/{name}/{version}"
    log.info("%s: parity max abs error %.3g on %s", target, report["max_abs_error"], report["provider"])
    log.info("registered %s; %s", model_uri, promotion)
    return ExportResult(target, report["max_abs_error"], report["provider"], model_uri, promotion)


def export_checked(
    generator: Generator, target: Path, params: Params, paths: Paths, run_id: str, half: bool = False
) -> dict[str, Any]:
    """Export (fp32, or fp16 with `half`), check the model and its parity; `target` is written only if it passes.

    Returns the parity report; its figures also go to the MLflow run.
    """
    prefix = "parity_fp16" if half else "parity"
    with atomic_path(target) as tmp:
        half_or_not = copy.deepcopy(generator).half() if half else generator
        z = torch.randn(2, generator.z_dim, 1, 1).to(next(half_or_not.parameters()).dtype)
        to_onnx(half_or_not, z, tmp, params.export.opset, ("z", "images"))
        _set_metadata(tmp, params, paths, run_id)
        onnx.checker.check_model(tmp, full_check=True)
        report = parity(generator, tmp, params, half)
        mlflow.log_metrics({f"{prefix}_max_abs_error": report["max_abs_error"], f"{prefix}_passed": report["passed"]})
        mlflow.set_tag(f"{prefix}.provider", report["provider"])
        if not report["passed"]:
            write_json_atomic(paths.reports / "parity.json", report)
            raise ParityError(
                f"{target}: ONNX Runtime ({report['provider']}) differs from torch by {report['max_abs_error']:.3g}"
                f" (tolerance {report['tolerance']:g}); the file was not written and nothing was registered"
            )
    return report


def to_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, names: tuple[str, str]) -> None:
    """`module` to ONNX at `path`: one file, one input and one output named by `names`, dynamic batch axis."""
    module = module.cpu().eval()
    program = torch.onnx.export(
        module,
        (example,),
        input_names=[names[0]],
        output_names=[names[1]],
        dynamic_shapes={names[0]: {0: torch.export.Dim("batch")}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)


class ClassProbabilities(torch.nn.Module):
    """The classifier as a page uses it: generated images in, class probabilities out (N x classes)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).softmax(1)


def export_classifier(params: Params, paths: Paths) -> dict[str, Any]:
    """models/classifier.safetensors -> models/classifier.onnx, taking images as the generator makes them
    (data.image_size, [-1, 1]: the resize is in the graph) and giving class probabilities; written only if ONNX
    Runtime agrees with torch within export.parity_atol. Returns its parity figures."""
    import onnxruntime as ort

    classifier = load_classifier(paths.models / "classifier.safetensors")
    model = ClassProbabilities(classifier).eval()
    size, channels = params.data.image_size, prepared_info(paths, params.data).channels
    images = torch.rand(64, channels, size, size, generator=torch.Generator().manual_seed(params.seed)) * 2 - 1
    target = paths.models / "classifier.onnx"
    with atomic_path(target) as tmp:
        to_onnx(model, images[:2], tmp, params.export.opset, ("images", "probabilities"))
        onnx_model = onnx.load(tmp)
        props = {"classes": json.dumps(classifier.classes), "task": classifier.task, "image_size": str(size)}
        onnx.helper.set_model_props(onnx_model, props)
        onnx.save(onnx_model, tmp)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = model(images).numpy()
        (actual,) = session.run(["probabilities"], {"images": images.numpy()})
        error = float(np.abs(actual - expected).max())
        if error > params.export.parity_atol:
            raise ParityError(
                f"{target}: ONNX Runtime differs from torch by {error:.3g} on the class probabilities (tolerance"
                f" {params.export.parity_atol:g}); the file was not written"
            )
    mlflow.log_metric("parity_classifier_max_abs_error", error)
    return {"max_abs_error": error, "provider": "CPUExecutionProvider", "passed": True}


def _set_metadata(path: Path, params: Params, paths: Paths, run_id: str) -> None:
    model = onnx.load(path)
    info = prepared_info(paths, params.data)
    onnx.helper.set_model_props(
        model,
        {
            "dataset": params.data.dataset,
            "classes": json.dumps(info.classes),
            "z_dim": str(params.model.z_dim),
            "image_size": str(params.data.image_size),
            "channels": str(info.channels),
            "value_range": "[-1, 1]",
            "mlflow_run_id": run_id,
            "data_dvc_md5": mlflow.get_run(run_id).data.tags["data.prepared.dvc_md5"],  # hashed once, by train
            "git_commit": tracking.git_commit(paths.root),
        },
    )
    onnx.save(model, path)


def parity(generator: Generator, path: Path, params: Params, half: bool = False) -> dict[str, Any]:
    """Torch (fp32) against ONNX Runtime on fixed and seeded random latents at several batch sizes.

    Where CUDA is available both run on it (TF32 off on both sides, CPU fallback disabled, and the check fails
    if the CUDA provider did not run); elsewhere on the CPU provider. With `half`, the ONNX model is the fp16
    export, fed fp16 latents, against the same fp32 torch model. Relative error is the max abs error over the
    largest output magnitude.
    """
    import onnxruntime as ort

    use_cuda = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()
    options = ort.SessionOptions()
    if use_cuda:
        ort.preload_dlls()
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers: list[Any] = [("CUDAExecutionProvider", {"use_tf32": "0"})]
        tolerance, device = params.export.parity_atol_cuda, torch.device("cuda")
    else:
        providers, tolerance, device = ["CPUExecutionProvider"], params.export.parity_atol, torch.device("cpu")
    session = ort.InferenceSession(str(path), options, providers=providers)
    ran = session.get_providers()
    if use_cuda and ran[0] != "CUDAExecutionProvider":
        raise ParityError(f"{path}: the CUDA provider did not run (providers: {ran})")
    if half:
        tolerance = params.export.parity_atol_fp16

    generator = generator.to(device).eval()
    rng = torch.Generator().manual_seed(params.seed)
    cases = {}
    for batch in PARITY_BATCHES:
        fixed = torch.linspace(-2, 2, batch * generator.z_dim).reshape(batch, generator.z_dim, 1, 1)
        for kind, z in (("fixed", fixed), ("random", torch.randn(batch, generator.z_dim, 1, 1, generator=rng))):
            with torch.no_grad():
                expected = generator(z.to(device)).cpu().numpy()
            (actual,) = session.run(["images"], {"z": z.numpy().astype(np.float16 if half else np.float32)})
            abs_error = float(np.abs(actual.astype(np.float32) - expected).max())
            cases[f"{kind}_batch_{batch}"] = {
                "max_abs_error": abs_error,
                "max_rel_error": abs_error / max(float(np.abs(expected).max()), 1e-12),
            }
    worst = max(case["max_abs_error"] for case in cases.values())
    return {
        "provider": ran[0],
        "providers": ran,
        "device": "cuda" if use_cuda else "cpu (no CUDA here: the CPU provider was checked)",
        "precision": "fp16" if half else "fp32",
        "max_abs_error": worst,
        "max_rel_error": max(case["max_rel_error"] for case in cases.values()),
        "tolerance": tolerance,
        "passed": worst <= tolerance,
        "cases": cases,
    }


def register(model: onnx.ModelProto, name: str, params: Params, channels: int) -> str:
    """Log the ONNX model to the active run and register it as a new version of `name`; returns the version.

    Its signature names the tensors as the ONNX graph does (`z` in, `images` out), so MLflow's model server takes
    `{"inputs": {"z": ...}}` (or one unnamed tensor) and refuses another shape or dtype with a 400 that says
    which was expected.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size, float32 = params.data.image_size, np.dtype(np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(float32, (-1, params.model.z_dim, 1, 1), "z")]),
        outputs=Schema([TensorSpec(float32, (-1, channels, size, size), "images")]),
    )
    z = np.random.default_rng(params.seed).standard_normal((2, params.model.z_dim, 1, 1), dtype=np.float32)
    with _quiet_cuda_provider():
        info = mlflow.onnx.log_model(
            model,
            name="generator",
            registered_model_name=name,
            signature=signature,
            input_example={"z": z},
            # Never both onnxruntime and onnxruntime-gpu: they overwrite each other's files.
            pip_requirements=[f"onnxruntime-gpu=={_version('onnxruntime-gpu')}", f"onnx=={onnx.__version__}", "numpy"],
            save_as_external_data=False,
        )
    return str(info.registered_model_version)


@contextlib.contextmanager
def _quiet_cuda_provider() -> Iterator[None]:
    """MLflow scores the input example on the model loaded with its default providers, CUDA first. Without a CUDA
    driver onnxruntime-gpu logs that failure as a red error and a warning; MLflow's own warning says it in one line
    ("Inference will run on CPU"). So on such a machine onnxruntime logs only fatal errors meanwhile."""
    import onnxruntime as ort

    if torch.cuda.is_available():
        yield
        return
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default, warnings and up


def write_cards(name: str, version: str, params: Params, paths: Paths, run_id: str, parity: dict[str, Any]) -> None:
    """The model card on the registered model and on the new version: what the MLflow UI shows for them."""
    metrics = json.loads((paths.reports / "metrics.json").read_text())
    info = prepared_info(paths, params.data)
    tags = mlflow.get_run(run_id).data.tags
    client = mlflow.MlflowClient()
    client.update_registered_model(name, description=model_card.model_card(name, params, info.channels, info.classes))
    card = model_card.version_card(
        params, metrics, parity, run_id, tracking.git_commit(paths.root), tags["data.prepared.dvc_md5"]
    )
    client.update_model_version(name, version, description=card)


def promote(name: str, version: str, fid: float) -> str:
    """Point `name`'s `champion` alias at `version` if its FID beats the current champion's (or there is none).

    Only a version that passed parity gets here. Returns the decision and its reason, in words.
    """
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, "fid", repr(fid))
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None:
        champion_fid = float(champion.tags.get("fid", "inf"))
        if fid >= champion_fid:
            return f"not promoted: FID {fid:.4g} is not below champion version {champion.version}'s {champion_fid:.4g}"
    client.set_registered_model_alias(name, CHAMPION, version)
    before = f"version {champion.version}" if champion else "none"
    return f"promoted to {CHAMPION}: FID {fid:.4g} (champion before: {before})"


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
