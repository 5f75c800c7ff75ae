"""The ONNX generator: one file with metadata, dynamic batch, parity, the registry's champion gate, and
torch-free inference with `dcgan generate`."""

import json
import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import dcgan.export
from dcgan.classifier import load_classifier, predict, train_classifier
from dcgan.config import Paths
from dcgan.data import prepare
from dcgan.errors import DiskError, ParityError
from dcgan.evaluate import evaluate, generator_as_exported
from dcgan.export import CHAMPION, REGISTERED_MODEL, export
from dcgan.tracking import tracking_uri
from dcgan.train import train

from .conftest import BIN


@pytest.fixture
def trained(project: Paths, tiny) -> Paths:
    """A tiny project taken through prepare, classifier, train and evaluate."""
    prepare(tiny, project)
    train_classifier(tiny, project)
    train(tiny, project)
    evaluate(tiny, project)
    return project


def _registry(paths: Paths) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri(paths))


def _set_fid(paths: Paths, fid: float) -> None:
    report = paths.reports / "metrics.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "fid": fid}))


def test_one_file_with_metadata_and_a_dynamic_batch(trained: Paths, tiny):
    result = export(tiny, trained)

    path = trained.models / "generator.onnx"
    assert result.onnx_path == path and sorted(p.name for p in trained.models.glob("generator.onnx*")) == [path.name]
    model = onnx.load(path)
    assert not [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")) >= 18
    meta = {p.key: p.value for p in model.metadata_props}
    run_id = json.loads(trained.mlflow_run.read_text())["run_id"]
    assert meta["z_dim"] == "8" and meta["image_size"] == "16" and meta["value_range"] == "[-1, 1]"
    assert meta["mlflow_run_id"] == run_id and meta["data_dvc_md5"].endswith(".dir") and meta["git_commit"]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 33):
        (images,) = session.run(None, {"z": np.zeros((batch, 8, 1, 1), np.float32)})
        assert images.shape == (batch, 1, 16, 16)

    parity = json.loads((trained.reports / "parity.json").read_text())
    assert parity["passed"] and parity["provider"] == "CPUExecutionProvider" and parity["max_abs_error"] <= 1e-5
    assert set(parity["cases"]) == {f"{kind}_batch_{b}" for kind in ("fixed", "random") for b in (1, 7, 64)}

    client = _registry(trained)
    version = client.get_model_version(REGISTERED_MODEL, result.model_uri.rsplit("/", 1)[1])
    assert version.run_id == run_id
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version == version.version
    run = client.get_run(run_id)
    assert {"export_fid_quick_bn_training", "export_fid_quick_bn_recalibrated"} <= set(run.data.metrics)


def test_fp16_variant_has_its_own_parity(trained: Paths, tiny):
    half = tiny.model_copy(update={"export": tiny.export.model_copy(update={"fp16": True})})
    export(half, trained)
    report = json.loads((trained.reports / "parity.json").read_text())["fp16"]
    assert report["precision"] == "fp16" and report["passed"] and report["tolerance"] == 0.0078
    fp16 = trained.models / "generator_fp16.onnx"
    weights = [t for t in onnx.load(fp16).graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)  # half the bytes
    session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    (images,) = session.run(None, {"z": np.zeros((3, 8, 1, 1), np.float16)})
    assert images.dtype == np.float16 and images.shape == (3, 1, 16, 16)


def test_the_classifier_is_exported_beside_the_generator_and_labels_as_torch_does(trained: Paths, tiny):
    export(tiny, trained)
    path = trained.models / "classifier.onnx"
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(meta["classes"]) == list("0123456789") and meta["task"] == "labels" and meta["image_size"] == "16"
    # Generated images as they are (16 x 16 here): the resize to the classifier's 28 x 28 is in the graph.
    images = generator_as_exported(tiny, trained)(torch.randn(20, 8, 1, 1))
    with torch.no_grad():
        expected = predict(load_classifier(trained.models / "classifier.safetensors"), images).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"images": images.detach().numpy()})
    assert probabilities.shape == (20, 10) and np.abs(probabilities - expected).max() <= 1e-5
    run_id = json.loads(trained.mlflow_run.read_text())["run_id"]
    logged = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="onnx/classifier.onnx", tracking_uri=tracking_uri(trained)
    )
    assert Path(logged).read_bytes() == path.read_bytes()
    assert json.loads((trained.reports / "parity.json").read_text())["classifier"]["max_abs_error"] <= 1e-5


def test_altered_weights_fail_parity_and_change_nothing(trained: Paths, tiny, monkeypatch: pytest.MonkeyPatch):
    export(tiny, trained)
    good = (trained.models / "generator.onnx").read_bytes()
    versions = len(_registry(trained).search_model_versions(f"name='{REGISTERED_MODEL}'"))
    real_to_onnx = dcgan.export.to_onnx

    def export_altered(generator, *args):
        with torch.no_grad():
            generator.main[0].weight.mul_(1.01)  # the ONNX file gets other weights than the torch reference
        real_to_onnx(generator, *args)
        with torch.no_grad():
            generator.main[0].weight.div_(1.01)

    monkeypatch.setattr(dcgan.export, "to_onnx", export_altered)
    _set_fid(trained, 0.0)  # it would be the best ever, if it passed
    with pytest.raises(
        ParityError, match="differs from torch by .* the file was not written and nothing was registered"
    ):
        export(tiny, trained)

    assert (trained.models / "generator.onnx").read_bytes() == good
    assert not json.loads((trained.reports / "parity.json").read_text())["passed"]
    client = _registry(trained)
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == versions
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version) == "1"


def test_champion_only_when_the_fid_is_better(trained: Paths, tiny):
    _set_fid(trained, 50.0)
    assert export(tiny, trained).promotion.startswith("promoted to champion: FID 50")
    _set_fid(trained, 60.0)
    worse = export(tiny, trained)
    assert worse.promotion == "not promoted: FID 60 is not below champion version 1's 50"
    _set_fid(trained, 40.0)
    better = export(tiny, trained)
    assert better.promotion == "promoted to champion: FID 40 (champion before: version 1)"
    client = _registry(trained)
    assert str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version) == "3"


def _generate(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`dcgan generate` in a fresh interpreter where importing torch fails."""
    code = "import sys; sys.modules['torch'] = None; from dcgan.cli import app; app(sys.argv[1:], prog_name='dcgan')"
    return subprocess.run(
        [str(BIN / "python"), "-c", code, "generate", *args],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_generate_needs_no_torch(trained: Paths, tiny, tmp_path: Path):
    export(tiny, trained)
    out = tmp_path / "grid.png"
    done = _generate(["--model", "models/generator.onnx", "-n", "10", "--seed", "1", "--out", str(out),
                      "--individual", str(tmp_path / "digits"), "--truncation", "1.5"], trained.root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    from PIL import Image

    assert Image.open(out).size == (8 * 18 + 2, 2 * 18 + 2)  # 8 a row, 16 px each with 2 px padding
    assert len(list((tmp_path / "digits").glob("*.png"))) == 10

    # The same through the registry: models:/dcgan-generator@champion, downloaded by MLflow.
    champion = f"models:/{REGISTERED_MODEL}@{CHAMPION}"
    by_alias = _generate(["--model", champion, "-n", "4", "--out", str(tmp_path / "c.png")],
                         trained.root, {"MLFLOW_TRACKING_URI": tracking_uri(trained)})  # fmt: skip
    assert by_alias.returncode == 0, by_alias.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "params.yaml"], "params.yaml: not a valid ONNX model"),
        (["--model", "missing.onnx"], "missing.onnx: no such model file"),
        (["--model", "models/generator.onnx", "-n", "0"], "-n 0: expected between 1 and 10000 samples"),
        (["--model", "models/generator.onnx", "-n", "-5"], "-n -5: expected between 1 and 10000 samples"),
        (["--model", "models/generator.onnx", "-n", "1000000"], "-n 1000000: expected between 1 and 10000"),
        (["--model", "models:/no-such-model@champion"], "models:/no-such-model@champion: cannot download it"),
    ],
)
def test_generate_refuses_bad_input(project: Paths, args: list[str], message: str, tmp_path: Path):
    (project.models).mkdir(exist_ok=True)
    (project.models / "generator.onnx").write_bytes(b"")  # only the size checks reach it
    done = _generate([*args, "--out", str(tmp_path / "x.png")], project.root,
                     {"MLFLOW_TRACKING_URI": tracking_uri(project)})  # fmt: skip
    assert done.returncode == 1 and message in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_full_disk_while_exporting_keeps_the_previous_model(trained: Paths, tiny):
    from .test_faults import file_size_limit

    export(tiny, trained)
    onnx_file = trained.models / "generator.onnx"
    good = onnx_file.read_bytes()

    # The export's own write (MLflow's SQLite store, which also grows, is not what this test is about).
    generator, run_id = generator_as_exported(tiny, trained), json.loads(trained.mlflow_run.read_text())["run_id"]
    with file_size_limit(len(good) // 2), pytest.raises(DiskError, match="generator.onnx: could not write it"):
        dcgan.export.export_checked(generator, onnx_file, tiny, trained, run_id)
    assert onnx_file.read_bytes() == good
    assert sorted(p.name for p in trained.models.glob("*generator*")) == ["generator.onnx", "generator.safetensors"]
