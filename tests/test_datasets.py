"""The data sets beyond MNIST, from generated fixtures: Fashion-MNIST and KMNIST (IDX, published .gz), CIFAR-10
(its binary archive, never a pickle) and a folder of images; then the colour path through every stage."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from dcgan.classifier import train_classifier
from dcgan.config import Params, Paths, load_params
from dcgan.data import fetch, load_prepared, prepare
from dcgan.data.cifar import ARCHIVE, CIFAR10, RECORD
from dcgan.data.idx import FASHION_MNIST
from dcgan.errors import DataError
from dcgan.evaluate import evaluate
from dcgan.export import CHAMPION, export, registered_model
from dcgan.generate import generate_images
from dcgan.tensors import read_metadata
from dcgan.tracking import experiment_name, tracking_uri
from dcgan.train import train

from .conftest import FIXTURE_DIR, mirror, write_params

GZ_FILES = [f.name for f in FASHION_MNIST.files]  # train-images-idx3-ubyte.gz, ...


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_gz_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The fixture's four .gz IDX files (MNIST's bytes, the format Fashion-MNIST and KMNIST publish) and their MD5."""
    folder = tmp_path / "published"
    folder.mkdir()
    for name in GZ_FILES:
        shutil.copy(FIXTURE_DIR / name, folder / name)
    return folder, {name: md5(folder / name) for name in GZ_FILES}


def cifar_pixels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 32 x 32 RGB images whose colour says their class (so a tiny classifier can learn it), and labels."""
    labels = np.arange(n) % 10
    palette = np.random.default_rng(0).integers(0, 256, (10, 3, 1, 1))  # one colour per class, in every batch
    noise = np.random.default_rng(seed + 1).integers(-40, 40, (n, 3, 32, 32))
    return np.clip(palette[labels] + noise, 0, 255).astype(np.uint8), labels


def cifar_archive(folder: Path, per_batch: int = 40, members: dict[str, bytes] | None = None) -> Path:
    """A cifar-10-binary.tar.gz as published, with `per_batch` records in each of its six batches."""
    if members is None:
        members = {}
        for i, name in enumerate([*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]):
            pixels, labels = cifar_pixels(per_batch, seed=i)
            records = np.concatenate([labels[:, None].astype(np.uint8), pixels.reshape(per_batch, -1)], axis=1)
            members[f"cifar-10-batches-bin/{name}"] = records.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cifar_project(tmp_path: Path, **overrides: object) -> tuple[Paths, Params]:
    """A project on the generated CIFAR-10 archive, fetched; its params (data.dataset=cifar10 and `overrides`)."""
    archive = cifar_archive(tmp_path / "published")
    settings = {"data.dataset": "cifar10", **overrides}
    params = write_params(tmp_path / "project", **settings)
    paths = Paths(tmp_path / "project")
    with_source = load_params(paths.root / "params.yaml", {**settings, "data.source_dir": str(archive.parent)})
    fetch(with_source, paths, {ARCHIVE: md5(archive)})
    return paths, params


# --- Fashion-MNIST and KMNIST ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["fashion-mnist", "kmnist"])
def test_idx_data_sets_keep_their_published_gz_files_and_prepare(tmp_path: Path, dataset: str):
    folder, digests = idx_gz_folder(tmp_path)
    params = write_params(tmp_path / "project", **{"data.dataset": dataset, "data.source_dir": str(folder)})
    paths = Paths(tmp_path / "project")
    result = fetch(params, paths, digests)
    assert result.raw == str(paths.raw(dataset)) and result.source == f"folder {folder}"
    assert sorted(p.name for p in paths.raw(dataset).iterdir()) == sorted(GZ_FILES)  # as published, checkable
    prepared = prepare(params, paths)
    assert prepared.counts == {"train": 512, "test": 256} and prepared.channels == 1
    assert len(prepared.classes) == 10 and prepared.classes[0] == ("T-shirt/top" if dataset == "fashion-mnist" else "o")
    images, labels = load_prepared(paths, "train", params.data)
    assert images.shape == (512, 1, 16, 16) and labels is not None and labels.max() <= 9


def test_idx_data_sets_refuse_a_wrong_md5_and_write_nothing(tmp_path: Path):
    folder, _ = idx_gz_folder(tmp_path)  # MNIST's bytes: not the published Fashion-MNIST files
    params = write_params(tmp_path / "project", **{"data.dataset": "fashion-mnist", "data.source_dir": str(folder)})
    with pytest.raises(DataError) as err:
        fetch(params, Paths(tmp_path / "project"))
    published = FASHION_MNIST.files[0]
    assert f"{published.name}: MD5 mismatch: expected {published.digest}, got {md5(folder / published.name)}" in str(
        err.value
    )
    assert not list(Paths(tmp_path / "project").raw("fashion-mnist").glob("*"))


def test_idx_data_sets_download_from_a_mirror(tmp_path: Path):
    folder, digests = idx_gz_folder(tmp_path)
    with mirror(folder) as url:
        params = write_params(tmp_path / "project", **{"data.dataset": "kmnist"})
        result = fetch(params, Paths(tmp_path / "project"), digests, mirrors=["http://127.0.0.1:9/", url])
    assert result.source == "download"
    for name in GZ_FILES:
        assert (Paths(tmp_path / "project").raw("kmnist") / name).read_bytes() == (folder / name).read_bytes()


# --- CIFAR-10 ----------------------------------------------------------------------------------------------------


def test_cifar10_binary_archive_is_read_record_by_record(tmp_path: Path):
    paths, params = cifar_project(tmp_path, **{"data.image_size": 32})
    result = prepare(params, paths)
    assert result.counts == {"train": 200, "test": 40} and result.channels == 3 and result.classes[0] == "airplane"
    with tarfile.open(paths.raw("cifar10") / ARCHIVE) as tar:  # the archive stays as published, read in place
        assert len(tar.getnames()) == 6
    images, labels = load_prepared(paths, "test", params.data)
    expected, expected_labels = cifar_pixels(40, seed=5)
    # At 32 x 32 no resize: the loaded values are exactly q / 127.5 - 1 of the archive's bytes.
    assert torch.equal(images, torch.from_numpy(expected).float() / 127.5 - 1)
    assert labels is not None and labels.tolist() == expected_labels.tolist()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"cifar-10-batches-bin/test_batch.bin": b"\x00" * (RECORD - 1)}, "not a whole number of 3073-byte records"),
        ({"cifar-10-batches-bin/other.bin": b"\x00" * RECORD}, "no member cifar-10-batches-bin/test_batch.bin"),
        ({"cifar-10-batches-bin/test_batch.bin": b"\x0c" + b"\x00" * (RECORD - 1)}, "label 12 outside"),
    ],
)
def test_cifar10_refuses_a_malformed_archive_and_writes_nothing(tmp_path: Path, members: dict, message: str):
    archive = cifar_archive(tmp_path / "published", members=members)
    params = write_params(tmp_path / "project", **{"data.dataset": "cifar10", "data.source_dir": str(archive.parent)})
    with pytest.raises(DataError, match=message):
        fetch(params, Paths(tmp_path / "project"), {ARCHIVE: md5(archive)})  # its own MD5: the format must fail
    assert not (Paths(tmp_path / "project").raw("cifar10") / ARCHIVE).exists()


def test_cifar10_refuses_a_truncated_download(tmp_path: Path):
    archive = cifar_archive(tmp_path / "published")
    archive.write_bytes(archive.read_bytes()[:-200])
    params = write_params(tmp_path / "project", **{"data.dataset": "cifar10", "data.source_dir": str(archive.parent)})
    with pytest.raises(DataError, match=f"{ARCHIVE}: MD5 mismatch: expected {CIFAR10.files[0].digest}|not a readable"):
        fetch(params, Paths(tmp_path / "project"))


# --- A folder of images ----------------------------------------------------------------------------------------


def image_folder(root: Path, labelled: bool = True) -> Path:
    """Grey PNGs, colour JPEGs and odd sizes in two classes, with a broken PNG, a text file and a hidden file."""
    rng = np.random.default_rng(0)
    for i in range(12):
        cls = ("cats", "dogs")[i % 2] if labelled else ""
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L").save(folder / f"grey{i}.png")
        elif i % 3 == 1:
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB").save(folder / f"colour{i}.jpg")
        else:
            Image.fromarray(rng.integers(0, 256, (7, 200, 3), dtype=np.uint8), "RGB").save(folder / f"strip{i}.PNG")
    target = root / ("cats" if labelled else "")
    (target / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (target / "notes.txt").write_text("not an image")
    (target / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def test_folder_of_images_crops_resizes_labels_and_skips_bad_files_by_name(tmp_path: Path, caplog):
    source = image_folder(tmp_path / "mine")
    params = write_params(tmp_path / "project", **{"data.dataset": "folder", "data.source_dir": str(source)})
    paths = Paths(tmp_path / "project")
    assert fetch(params, paths).source.startswith(f"folder {source} (14 files)")  # the hidden file is not copied
    result = prepare(params, paths)
    assert result.channels == 3 and result.classes == ["cats", "dogs"]  # colour when any image is
    assert result.counts["train"] + result.counts["test"] == 12 and result.counts["test"] == 1
    images, labels = load_prepared(paths, "train", params.data)
    assert images.shape == (11, 3, 16, 16) and labels is not None and set(labels.tolist()) == {0, 1}
    assert (
        "skipped 2 file(s): cats/broken.png: cannot be read" in caplog.text
        and "cats/notes.txt: not a PNG" in caplog.text
    )
    assert read_metadata(paths.prepared / "train.safetensors")["skipped"] == ["cats/broken.png", "cats/notes.txt"]


def test_folder_refuses_bad_files_when_asked_and_keeps_earlier_outputs(tmp_path: Path):
    source = image_folder(tmp_path / "mine")
    params = write_params(tmp_path / "project", **{"data.dataset": "folder", "data.source_dir": str(source)})
    paths = Paths(tmp_path / "project")
    fetch(params, paths)
    prepare(params, paths)
    before = {p.name: p.read_bytes() for p in paths.prepared.iterdir()}
    strict = params.model_copy(update={"data": params.data.model_copy(update={"bad_images": "refuse"})})
    with pytest.raises(DataError, match=r"2 file\(s\) refused \(cats/broken.png: cannot be read.*cats/notes.txt"):
        prepare(strict, paths)
    assert {p.name: p.read_bytes() for p in paths.prepared.iterdir()} == before


def test_an_unlabelled_folder_is_measured_with_rotation_features_and_says_which_metrics_exist(tmp_path: Path):
    """No class subfolders: the classifier learns which way up each image is; FID, KID and precision/recall exist,
    the Inception Score and class coverage do not; the generator is still evaluated, exported and registered."""
    source = tmp_path / "mine"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):  # grey images with a bright top half: which way up they are can be learnt
        pixels = rng.integers(0, 80, (24, 24), dtype=np.uint8)
        pixels[:12] += 150
        Image.fromarray(pixels, "L").save(source / f"{i:02d}.png")
    settings = {"data.dataset": "folder", "data.source_dir": str(source), "data.train_limit": None}
    params = write_params(tmp_path / "project", **settings, **{"train.batch_size": 8, "classifier.epochs": 5})
    paths = Paths(tmp_path / "project")
    fetch(params, paths)
    result = prepare(params, paths)
    assert result.channels == 1 and result.classes == [] and result.counts == {"train": 36, "test": 4}
    assert load_prepared(paths, "train", params.data)[1] is None

    assert train_classifier(params, paths).test_accuracy > 0.5  # of the rotation task: 0.25 is chance
    assert read_metadata(paths.models / "classifier.safetensors")["task"] == "rotation"
    train(params, paths)
    metrics = evaluate(params, paths).metrics
    feature_metrics = {"fid", "kid", "precision", "recall"}
    assert set(metrics) == {*feature_metrics, *(f"real_{m}" for m in feature_metrics), "classifier_accuracy"}
    for picture in ("samples", "digits", "interpolation", "class_histogram"):
        assert (paths.reports / f"{picture}.png").is_file()
    assert export(params, paths).model_uri == "models:/dcgan-generator-folder/1"


def test_folder_needs_a_source_dir(tmp_path: Path):
    params = write_params(tmp_path, **{"data.dataset": "folder"})
    with pytest.raises(DataError, match="set data.source_dir to the folder of your images"):
        fetch(params, Paths(tmp_path))


# --- Colour through every stage ----------------------------------------------------------------------------------


def test_colour_from_prepare_to_generate_with_its_own_experiment_and_registry(tmp_path: Path):
    paths, params = cifar_project(tmp_path, **{"data.train_limit": 128, "classifier.epochs": 10})
    prepare(params, paths)
    assert train_classifier(params, paths).test_accuracy > 0.5  # colours tell the classes apart
    result = train(params, paths)
    assert result.steps == 2 * 128 // 32
    metrics = evaluate(params, paths).metrics
    assert 0 < metrics["real_fid"] < metrics["fid"] and metrics["real_digits_covered"] == 10
    exported = export(params, paths)
    assert exported.max_abs_error <= 1e-5 and exported.model_uri == "models:/dcgan-generator-cifar10/1"

    model = onnx.load(paths.models / "generator.onnx")
    props = {p.key: p.value for p in model.metadata_props}
    assert props["dataset"] == "cifar10" and props["channels"] == "3" and '"airplane"' in props["classes"]
    client = mlflow.MlflowClient(tracking_uri(paths))
    run = client.get_run(result.run_id)
    assert client.get_experiment(run.info.experiment_id).name == experiment_name("cifar10") == "dcgan-cifar10"
    assert run.data.tags["dataset"] == "cifar10"
    assert str(client.get_model_version_by_alias(registered_model("cifar10"), CHAMPION).version) == "1"
    assert not client.search_registered_models("name='dcgan-generator'")  # MNIST's champion is another model

    out = generate_images(str(paths.models / "generator.onnx"), 5, 0, tmp_path / "grid.png", tmp_path / "each")
    with Image.open(out.grid) as grid, Image.open(tmp_path / "each" / "00000.png") as one:
        assert grid.mode == "RGB" and one.mode == "RGB" and one.size == (16, 16)
