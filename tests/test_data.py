import gzip
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from dcgan.config import DataParams, Paths, load_params
from dcgan.data import fetch, load_prepared, prepare
from dcgan.data.idx import MNIST, parse_idx
from dcgan.errors import DataError
from dcgan.tensors import read_metadata

from .conftest import FIXTURE_DIR, FIXTURE_SHA256, mirror, write_params

FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
MNIST_SHA256 = {f.name: f.digest for f in MNIST.files}


def _source(tmp_path: Path, **edits: bytes) -> Path:
    """A copy of the fixture, uncompressed, with some files' bytes replaced."""
    folder = tmp_path / "source"
    folder.mkdir()
    for name in FIXTURE_SHA256:
        data = edits.get(name) or gzip.decompress((FIXTURE_DIR / f"{name}.gz").read_bytes())
        (folder / name).write_bytes(data)
    return folder


def _fetch(root: Path, source: Path, digests=FIXTURE_SHA256) -> None:
    write_params(root)
    fetch(load_params(root / "params.yaml", {"data.source_dir": str(source)}), Paths(root), digests)


def _raw(name: str) -> bytes:
    return gzip.decompress((FIXTURE_DIR / f"{name}.gz").read_bytes())


def test_fetch_from_a_gzip_folder_writes_the_uncompressed_originals(project: Paths):
    for name in FIXTURE_SHA256:
        assert (project.raw("mnist") / name).read_bytes() == _raw(name)
    assert sorted(p.name for p in project.raw("mnist").iterdir()) == sorted(FIXTURE_SHA256)  # no temp files left


def test_fetch_reads_the_environment_variable_and_keeps_good_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_params(tmp_path)
    params = load_params(tmp_path / "params.yaml")
    monkeypatch.setenv("DCGAN_MNIST_DIR", str(_source(tmp_path)))
    fetch(params, Paths(tmp_path), FIXTURE_SHA256)
    before = {p: p.stat().st_mtime_ns for p in Paths(tmp_path).raw("mnist").iterdir()}
    monkeypatch.setenv("DCGAN_MNIST_DIR", str(tmp_path / "gone"))  # present files need no source
    fetch(params, Paths(tmp_path), FIXTURE_SHA256)
    assert {p: p.stat().st_mtime_ns for p in Paths(tmp_path).raw("mnist").iterdir()} == before


def test_fetch_refuses_a_wrong_digest_and_writes_nothing(tmp_path: Path):
    with pytest.raises(DataError) as err:
        _fetch(tmp_path / "project", _source(tmp_path), digests=MNIST_SHA256)
    message = str(err.value)
    name = "train-images-idx3-ubyte"
    assert name in message and MNIST_SHA256[name] in message and FIXTURE_SHA256[name] in message
    assert "SHA-256 mismatch" in message
    assert not list((tmp_path / "project" / "data" / "raw" / "mnist").glob("*"))


def test_fetch_refuses_a_wrong_magic_number(tmp_path: Path):
    bad = bytearray(_raw("train-labels-idx1-ubyte"))
    bad[3] = 3  # claims three dimensions
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: bad magic number 0x00000803"):
        _fetch(tmp_path / "project", _source(tmp_path, **{"train-labels-idx1-ubyte": bytes(bad)}))
    assert not (tmp_path / "project" / "data" / "raw" / "mnist" / "train-labels-idx1-ubyte").exists()


def test_fetch_refuses_a_truncated_file(tmp_path: Path):
    short = _raw("t10k-images-idx3-ubyte")[:-100]
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated: header declares shape \(256, 28, 28\)"):
        _fetch(tmp_path / "project", _source(tmp_path, **{"t10k-images-idx3-ubyte": short}))
    assert not (tmp_path / "project" / "data" / "raw" / "mnist" / "t10k-images-idx3-ubyte").exists()


def test_fetch_names_a_missing_file(tmp_path: Path):
    source = _source(tmp_path)
    (source / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: missing from"):
        _fetch(tmp_path / "project", source)


def test_fetch_refuses_a_corrupt_gzip(tmp_path: Path):
    source = tmp_path / "source"
    shutil.copytree(FIXTURE_DIR, source)
    gz = source / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: corrupt gzip"):
        _fetch(tmp_path / "project", source)


def test_fetch_downloads_from_a_mirror(tmp_path: Path):
    """The download path, against a real HTTP server on loopback serving the fixture's .gz files."""
    with mirror(FIXTURE_DIR) as url:
        write_params(tmp_path)
        dead_mirror = "http://127.0.0.1:9/"  # nothing listens on the discard port: the next mirror is tried
        fetch(load_params(tmp_path / "params.yaml"), Paths(tmp_path), FIXTURE_SHA256, mirrors=[dead_mirror, url])
    for name in FIXTURE_SHA256:
        assert (Paths(tmp_path).raw("mnist") / name).read_bytes() == _raw(name)


def test_parse_idx_reads_the_shape():
    images = parse_idx(_raw("train-images-idx3-ubyte"), "x", 3)
    assert images.shape == (512, 28, 28) and images.max() == 255


def test_prepare_makes_unit_range_tensors_with_labels(project: Paths, tiny):
    result = prepare(tiny, project)
    assert result.counts == {"train": 512, "test": 256}  # all of them: data.train_limit applies when training
    assert (result.channels, result.classes) == (1, list("0123456789"))
    images, labels = load_prepared(project, "train", tiny.data)
    assert images.dtype == torch.float32 and images.shape == (512, 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() == -1 and images.max() > 0.9  # MNIST's background is black, strokes near white
    assert labels is not None and labels.dtype == torch.int64 and labels[:10].tolist() == FIRST_TRAIN_LABELS
    test_images, test_labels = load_prepared(project, "test", tiny.data)
    assert test_images.shape == (256, 1, 16, 16) and test_labels is not None
    assert test_labels[:10].tolist() == FIRST_TEST_LABELS
    first, _ = load_prepared(project, "train", tiny.data, limit=256)
    assert torch.equal(first, images[:256])


def test_prepared_images_are_uint8_within_one_level_of_the_float_pipeline(project: Paths, tiny):
    """A quarter of float32's bytes, and what training sees moves by at most 1/255 from the float32 pipeline's
    values (bilinear antialiased resize of x / 255, scaled to [-1, 1]), which MNIST had before."""
    prepare(tiny.model_copy(update={"data": tiny.data.model_copy(update={"image_size": 64})}), project)
    with safe_open(project.prepared / "train.safetensors", framework="pt") as f:
        assert f.get_slice("images").get_dtype() == "U8" and f.get_slice("labels").get_dtype() == "U8"
    raw = parse_idx(_raw("train-images-idx3-ubyte"), "x", 3)
    float_pipeline = F.interpolate(
        torch.from_numpy(raw.copy()).unsqueeze(1).float().div(255), size=(64, 64), mode="bilinear", antialias=True
    )
    float_pipeline = float_pipeline.mul(2).sub(1).clamp(-1, 1)
    loaded, _ = load_prepared(project, "train", DataParams(image_size=64))
    assert (loaded - float_pipeline).abs().max() <= 1 / 255 + 1e-6
    size = (project.prepared / "train.safetensors").stat().st_size
    assert size <= float_pipeline.numel() * 4 / 4 + 4096  # uint8: a quarter of float32, plus labels and header


def test_prepared_metadata_records_the_source(project: Paths, tiny):
    prepare(tiny, project)
    meta = read_metadata(project.prepared / "train.safetensors")
    assert meta["image_size"] == 16 and meta["count"] == 512 and meta["dataset"] == "mnist"
    assert meta["channels"] == 1 and meta["classes"] == list("0123456789")
    assert meta["source_sha256"]["train-images-idx3-ubyte"] == FIXTURE_SHA256["train-images-idx3-ubyte"]


def test_prepare_is_byte_for_byte_reproducible(project: Paths, tiny):
    """The same inputs give the same bytes, so DVC sees no change when nothing changed."""
    prepare(tiny, project)
    first = {p.name: p.read_bytes() for p in project.prepared.iterdir()}
    prepare(tiny, project)
    assert {p.name: p.read_bytes() for p in project.prepared.iterdir()} == first


def test_prepared_data_of_another_size_is_refused(project: Paths, tiny):
    prepare(tiny, project)
    with pytest.raises(DataError, match="holds 16x16 images but data.image_size is 32"):
        load_prepared(project, "train", DataParams(image_size=32))
    with pytest.raises(DataError, match="holds mnist but data.dataset is kmnist: run `dcgan prepare`"):
        load_prepared(project, "train", DataParams(dataset="kmnist", image_size=16))


def test_prepare_names_missing_raw_data(tmp_path: Path):
    params = write_params(tmp_path)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: missing: run `dcgan fetch` first"):
        prepare(params, Paths(tmp_path))


def test_files_fetched_for_a_committed_dvc_file_go_into_dvcs_cache(repo: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh clone holds data/raw/mnist.dvc but neither the files nor DVC's cache of them: after the fetch both
    are there, so the next check finds them up to date and DVC's queue can check them out elsewhere."""
    import dataclasses

    from dcgan.data.datasets import DATASETS
    from dcgan.data.published import with_digests
    from dcgan.versioning import fetch_versioned

    from .conftest import run_cmd

    fixture_mnist = dataclasses.replace(MNIST, files=tuple(with_digests(MNIST.files, FIXTURE_SHA256)))
    monkeypatch.setitem(DATASETS, "mnist", fixture_mnist)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "raw" / "mnist")
    params = load_params(repo / "params.yaml", {"data.source_dir": str(FIXTURE_DIR)})
    assert fetch_versioned(params, Paths(repo)) == f"fetched from folder {FIXTURE_DIR}"
    assert "not in cache" not in run_cmd(repo, "dvc", "status", "data/raw/mnist.dvc").stdout
    assert run_cmd(repo, "git", "status", "--porcelain").stdout == ""  # mnist.dvc as committed
    assert fetch_versioned(params, Paths(repo)) == f"up to date: {repo}/data/raw/mnist matches mnist.dvc"
