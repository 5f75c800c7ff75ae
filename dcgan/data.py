"""MNIST: fetch the four original IDX files, check them, and prepare [-1, 1] tensors.

fetch:   source folder or download mirrors -> data/raw/mnist/<name>   (uncompressed IDX, SHA-256 checked)
prepare: data/raw/mnist -> data/prepared/{train,test}.safetensors    (images N x 1 x S x S in [-1, 1], labels N)
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from dcgan.config import Params, Paths
from dcgan.errors import DataError, DownloadError
from dcgan.files import write_bytes_atomic
from dcgan.tensors import read_metadata, save_tensors

log = logging.getLogger(__name__)

# SHA-256 of the uncompressed originals, as published with the data set's mirrors.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
SOURCE_ENV = "DCGAN_MNIST_DIR"
IDX_UBYTE = 0x08
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class FetchResult:
    files: dict[str, str]  # name -> SHA-256
    source: str


@dataclass(frozen=True)
class PrepareResult:
    counts: dict[str, int]  # split -> number of images
    image_size: int


# --- IDX files -----------------------------------------------------------------------------------------------


def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """Decode an IDX file of unsigned bytes with `ndim` dimensions, checking its header against its length."""
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{name}: truncated: {len(data)} bytes is shorter than an IDX header")
    zero, dtype, dims_in_file = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype != IDX_UBYTE or dims_in_file != ndim:
        raise DataError(
            f"{name}: bad magic number 0x{data[:4].hex()}: expected 0x000008{ndim:02x} "
            f"(IDX, unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: header declares shape {shape} ({expected} bytes), file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def idx_ndim(name: str) -> int:
    return 3 if "images" in name else 1


def read_idx(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing: run `dcgan fetch` first")
    return parse_idx(path.read_bytes(), str(path), idx_ndim(path.name))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- fetch ---------------------------------------------------------------------------------------------------


def fetch(
    params: Params,
    paths: Paths,
    digests: Mapping[str, str] = MNIST_SHA256,
    mirrors: Sequence[str] | None = None,
) -> FetchResult:
    """Materialize the four IDX files in `paths.raw`, each checked against `digests`.

    The source is `data.source_dir`, else $DCGAN_MNIST_DIR (a folder of raw or gzipped IDX files), else a
    download from torchvision's MNIST mirrors. Files already present with the right digest are kept.
    A file that fails a check is never written.
    """
    source_dir = params.data.source_dir or os.environ.get(SOURCE_ENV)
    source = f"folder {source_dir}" if source_dir else "download"
    for name, expected in digests.items():
        target = paths.raw / name
        if target.is_file() and sha256(target.read_bytes()) == expected:
            log.info("%s: present, digest ok", target)
            continue
        data = _read_source(Path(source_dir), name) if source_dir else _download(name, mirrors)
        parse_idx(data, name, idx_ndim(name))
        actual = sha256(data)
        if actual != expected:
            raise DataError(f"{name}: SHA-256 mismatch: expected {expected}, got {actual} (from {source})")
        write_bytes_atomic(target, data)
        log.info("%s: written from %s", target, source)
    return FetchResult(files=dict(digests), source=source)


def _read_source(folder: Path, name: str) -> bytes:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return _maybe_gunzip(candidate.read_bytes(), str(candidate))
    raise DataError(f"{name}: missing from {folder} (looked for {name} and {name}.gz)")


def _download(name: str, mirrors: Sequence[str] | None) -> bytes:
    if mirrors is None:
        from torchvision.datasets import MNIST

        mirrors = MNIST.mirrors
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                return _maybe_gunzip(response.read(), url)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            log.warning("%s: %s", url, err)
            failures.append(f"{url}: {err}")
    raise DownloadError(
        f"{name}: download failed from every mirror ({'; '.join(failures)}); "
        f"offline, point data.source_dir or ${SOURCE_ENV} at a folder of the IDX files"
    )


def _maybe_gunzip(data: bytes, origin: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise DataError(f"{origin}: corrupt gzip: {err}") from None


# --- prepare -------------------------------------------------------------------------------------------------


def prepare(params: Params, paths: Paths) -> PrepareResult:
    """IDX -> float32 images in [-1, 1] at `data.image_size` (bilinear, antialiased) plus int64 labels."""
    size = params.data.image_size
    counts = {}
    for split, prefix in SPLIT_PREFIX.items():
        images_path = paths.raw / f"{prefix}-images-idx3-ubyte"
        labels_path = paths.raw / f"{prefix}-labels-idx1-ubyte"
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise DataError(f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels")
        if split == "train" and params.data.train_limit is not None:
            images, labels = images[: params.data.train_limit], labels[: params.data.train_limit]
        tensors = {"images": to_unit_range(images, size), "labels": torch.from_numpy(labels.astype(np.int64))}
        metadata = {
            "split": split,
            "image_size": size,
            "count": len(labels),
            "value_range": [-1, 1],
            "source_sha256": {p.name: sha256(p.read_bytes()) for p in (images_path, labels_path)},
        }
        target = paths.prepared / f"{split}.safetensors"
        save_tensors(tensors, target, metadata)
        counts[split] = len(labels)
        log.info("%s: %d images at %dx%d", target, len(labels), size, size)
    return PrepareResult(counts=counts, image_size=size)


def to_unit_range(images: np.ndarray, size: int, chunk: int = 8192) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float32 N x 1 x size x size in [-1, 1], resized in chunks to bound memory."""
    out = torch.empty(len(images), 1, size, size)
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(images[start : start + chunk].copy()).unsqueeze(1).float().div_(255)  # B x 1 x 28 x 28
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.mul_(2).sub_(1).clamp_(-1, 1)
    return out


def load_prepared(
    paths: Paths, split: str, image_size: int, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prepared (images, labels) of `split` (the first `limit` only, read alone, when given), refusing data
    prepared at another image size."""
    path = paths.prepared / f"{split}.safetensors"
    if not path.is_file():
        raise DataError(f"{path}: missing: run `dcgan prepare` first")
    try:
        found = read_metadata(path).get("image_size")
        if found != image_size:
            raise DataError(
                f"{path}: holds {found}x{found} images but data.image_size is {image_size}: run `dcgan prepare`"
            )
        with safe_open(path, framework="pt") as f:
            return f.get_slice("images")[:limit], f.get_slice("labels")[:limit]
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise DataError(f"{path}: not a prepared data file: {err}") from None


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled index order of one epoch, a pure function of (seed, epoch): resuming mid-epoch needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
