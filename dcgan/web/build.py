"""`dcgan web build`: a static folder that explores a generator in the browser, with no inference on a server.

    models:/dcgan-generator@champion (or models/generator.onnx) -> web/
        index.html, *.mjs, style.css      the page (dcgan/web/page), copied as it is
        ort/                              onnxruntime-web's three pinned files (runtime.py)
        generator.<sha>.onnx              the generator; its checksum in the name, so a new champion is never
        classifier.<sha>.onnx             masked by a browser's cache of the old one
        card.json                         what the page shows and needs: registry version, alias, figures, run,
                                          commit, z size, classes, file names and checksums, latent directions

The folder is built beside `out` and swapped in whole: a failed build leaves the earlier one as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from dcgan import model_card, tracking
from dcgan.config import Paths
from dcgan.errors import DcganError
from dcgan.web.directions import latent_directions
from dcgan.web.runtime import VERSION, runtime_files

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "page"
FIGURES = (*model_card.FIGURES, "classifier_accuracy")  # the evaluation's figures the page's card shows


@dataclass(frozen=True)
class WebBuild:
    folder: Path
    model: str
    generator: str  # its file name in the folder
    classifier: str


@dataclass(frozen=True)
class Source:
    """A generator, the classifier of its run, and what the registry or the project's reports say of them."""

    generator: Path
    classifier: Path
    registry: dict[str, Any]  # name, version, aliases; empty for a local file
    metrics: dict[str, float]


def build_site(model: str, out: Path, paths: Paths) -> WebBuild:
    """Assemble the page for `model` (a models:/ URI or an .onnx file) in `out`."""
    runtime = runtime_files()
    with tempfile.TemporaryDirectory(prefix="dcgan-web-") as downloads:
        source = _registered(model, paths, Path(downloads)) if model.startswith("models:/") else _local(model, paths)
        meta = _metadata(source.generator)
        classifier_meta = _metadata(source.classifier)
        files = {"generator": source.generator, "classifier": source.classifier}
        digests = {role: _sha256(path) for role, path in files.items()}
        names = {role: f"{role}.{digest[:12]}.onnx" for role, digest in digests.items()}
        card = {
            "model": model,
            **source.registry,
            "dataset": meta.get("dataset", "mnist"),
            "classes": json.loads(classifier_meta.get("classes", "[]")),
            "classifier_task": classifier_meta.get("task", "labels"),
            "z_dim": int(meta["z_dim"]),
            "image_size": int(meta["image_size"]),
            "channels": int(meta.get("channels", "1")),
            "mlflow_run_id": meta.get("mlflow_run_id"),
            "git_commit": meta.get("git_commit"),
            "data_dvc_md5": meta.get("data_dvc_md5"),
            "metrics": source.metrics,
            "files": {role: {"name": names[role], "sha256": digests[role]} for role in files},
            "onnxruntime_web": VERSION,
            "latent": latent_directions(source.generator),
        }

        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            shutil.copytree(PAGE, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            (staging / "ort").mkdir()
            for name, path in runtime.items():
                shutil.copyfile(path, staging / "ort" / name)
            for role, path in files.items():
                shutil.copyfile(path, staging / names[role])
            (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
            _swap(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: the page for %s (%s)", out, model, names["generator"])
    return WebBuild(out, model, names["generator"], names["classifier"])


def _registered(model: str, paths: Paths, downloads: Path) -> Source:
    """The registered version `model` names, and the classifier logged by the run that made it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.use_store(paths)
    name, _, reference = model.removeprefix("models:/").partition("@")
    alias = reference or None
    if alias is None:
        name, _, reference = name.partition("/")
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, reference)
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=str(downloads)))
        classifier = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="onnx/classifier.onnx", dst_path=str(downloads / "classifier")
        )
        run = client.get_run(str(version.run_id))
    except MlflowException as err:
        raise DcganError(
            f"{model}: cannot get it, or its run's onnx/classifier.onnx, from {tracking.tracking_uri(paths)}:"
            f" {str(err).splitlines()[0]} (versions exported before `dcgan web` existed have no classifier: run"
            " `dcgan export` again)"
        ) from None
    metrics = {key: run.data.metrics[f"eval_{key}"] for key in FIGURES if f"eval_{key}" in run.data.metrics}
    registry = {"registered_model": name, "version": version.version, "aliases": sorted(version.aliases)}
    return Source(folder / "model.onnx", Path(classifier), registry, metrics)


def _local(model: str, paths: Paths) -> Source:
    """An exported file, the classifier exported beside it, and the project's reports/metrics.json if any."""
    generator = Path(model)
    classifier = generator.parent / "classifier.onnx"
    for path in (generator, classifier):
        if not path.is_file():
            raise DcganError(f"{path}: no such file: run `dcgan export` first (it writes both .onnx files)")
    report = paths.reports / "metrics.json"
    metrics = json.loads(report.read_text()) if report.is_file() else {}
    return Source(generator, classifier, {}, {key: metrics[key] for key in FIGURES if key in metrics})


def _metadata(path: Path) -> dict[str, str]:
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a file that is not ONNX
        raise DcganError(f"{path}: not an ONNX model: {err}") from None
    return {prop.key: prop.value for prop in model.metadata_props}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _swap(staging: Path, out: Path) -> None:
    """Put the finished `staging` folder at `out`, replacing an earlier build only once the new one is whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
