"""The IDX data sets: MNIST, Fashion-MNIST and Kuzushiji-MNIST, 28 x 28 grey images in ten classes.

MNIST is stored as its four uncompressed originals (their SHA-256, as published with the mirrors); Fashion-MNIST
and KMNIST as the four .gz files their publishers distribute (checked against the published MD5).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcgan.config import DataParams
from dcgan.data.published import PublishedFile, fetch_files, gunzip, hexdigest, with_digests
from dcgan.data.source import Images
from dcgan.errors import DataError

log = logging.getLogger(__name__)

IDX_UBYTE = 0x08
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


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
    """The array in an IDX file (gzipped or not)."""
    if not path.is_file():
        raise DataError(f"{path}: missing: run `dcgan fetch` first")
    return parse_idx(gunzip(path.read_bytes(), str(path)), str(path), idx_ndim(path.name))


def _check(data: bytes, name: str) -> None:
    parse_idx(gunzip(data, name), name, idx_ndim(name))


@dataclass(frozen=True)
class IdxSource:
    name: str
    files: tuple[PublishedFile, ...]  # train images, train labels, test images, test labels
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    offline_hint: str
    source_env: str | None = None  # an environment variable naming a local folder, after data.source_dir
    classifier_size: int = 28  # the data set's own size: the classifier measures at it

    def fetch(
        self, data: DataParams, raw: Path, digests: Mapping[str, str] | None, mirrors: Sequence[str] | None
    ) -> str:
        folder = data.source_dir or (os.environ.get(self.source_env) if self.source_env else None)
        files = with_digests(self.files, digests)
        return fetch_files(files, raw, folder, mirrors or self.mirrors, _check, self.offline_hint)

    def read(self, data: DataParams, raw: Path, split: str) -> Images:
        prefix = SPLIT_PREFIX[split]
        images_file, labels_file = (f for f in self.files if f.name.startswith(prefix))
        images_path, labels_path = raw / images_file.name, raw / labels_file.name
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise DataError(f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels")
        if labels.max(initial=0) >= len(self.classes):
            raise DataError(f"{labels_path}: label {labels.max()} outside the {len(self.classes)} classes")
        provenance = {p.name: hexdigest(p.read_bytes(), "sha256") for p in (images_path, labels_path)}
        return Images(images[:, None], labels.astype(np.int64), self.classes, {"source_sha256": provenance})


def _published_gz(name: str, md5s: tuple[str, str, str, str], mirror: str, classes: tuple[str, ...]) -> IdxSource:
    """An MNIST-format data set whose four files are kept as the .gz files published, checked by their MD5
    (train images, train labels, test images, test labels)."""
    names = [
        f"{prefix}-{kind}-idx{ndim}-ubyte.gz"
        for prefix in ("train", "t10k")
        for kind, ndim in (("images", 3), ("labels", 1))
    ]
    return IdxSource(
        name=name,
        files=tuple(PublishedFile(file, md5, algorithm="md5") for file, md5 in zip(names, md5s, strict=True)),
        mirrors=(mirror,),
        classes=classes,
        offline_hint="offline, point data.source_dir at a folder of the four .gz files as published",
    )


MNIST = IdxSource(
    name="mnist",
    files=tuple(
        PublishedFile(name, sha256, gunzip=True)
        for name, sha256 in {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        }.items()
    ),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    classes=tuple("0123456789"),
    offline_hint="offline, point data.source_dir or $DCGAN_MNIST_DIR at a folder of the IDX files",
    source_env="DCGAN_MNIST_DIR",
)

# MD5 of the .gz files as Zalando Research publishes them (github.com/zalandoresearch/fashion-mnist).
FASHION_MNIST = _published_gz(
    "fashion-mnist",
    (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)

# MD5 of the .gz files as ROIS-DS CODH publishes them (github.com/rois-codh/kmnist).
KMNIST = _published_gz(
    "kmnist",
    (
        "bdb82020997e1d708af4cf47b453dcf7",
        "e144d726b3acfaa3e44228e80efcd344",
        "5c965bf0a639b31b8f53240b1b52f4d7",
        "7320c461ea6c1c855c0b718fb2a4b134",
    ),
    "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
)
