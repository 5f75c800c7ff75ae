"""CIFAR-10 from its binary distribution: 32 x 32 colour images in ten classes, 50,000 to train and 10,000 to
test. Never the Python version: that one is a pickle, and nothing downloaded is ever unpickled.

data/raw/cifar10/cifar-10-binary.tar.gz, as published (MD5 from www.cs.toronto.edu/~kriz/cifar.html), read in
place: each member is a run of 3,073-byte records, one label byte then 1,024 red, 1,024 green and 1,024 blue
bytes, rows top to bottom.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcgan.config import DataParams
from dcgan.data.published import PublishedFile, fetch_files, with_digests
from dcgan.data.source import Images
from dcgan.errors import DataError

ARCHIVE = "cifar-10-binary.tar.gz"
MEMBERS = {
    "train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["cifar-10-batches-bin/test_batch.bin"],
}
RECORD = 1 + 3 * 32 * 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_members(archive: Path | bytes, names: Sequence[str], origin: str) -> Images:
    """The records of `names` in the tar.gz `archive` (a path, or its bytes), checked record by record."""
    fileobj = io.BytesIO(archive) if isinstance(archive, bytes) else None
    chunks = []
    try:
        with tarfile.open(name=None if fileobj else archive, fileobj=fileobj, mode="r:gz") as tar:
            for name in names:
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise DataError(f"{origin}: no member {name}: not the CIFAR-10 binary archive") from None
                stream = tar.extractfile(member) if member.isfile() else None
                if stream is None:
                    raise DataError(f"{origin}: {name} is not a regular file")
                data = stream.read()
                if not data or len(data) % RECORD:
                    raise DataError(
                        f"{origin}: {name}: {len(data)} bytes is not a whole number of {RECORD}-byte records"
                    )
                chunks.append(np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{origin}: not a readable tar.gz archive: {err}") from None
    records = np.concatenate(chunks)
    labels = records[:, 0].astype(np.int64)
    if labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"{origin}: label {labels.max()} outside CIFAR-10's {len(CLASSES)} classes")
    pixels = records[:, 1:].reshape(-1, 3, 32, 32)  # N x RGB x H x W
    return Images(pixels, labels, CLASSES, {})


def _check(data: bytes, name: str) -> None:
    read_members(data, MEMBERS["test"], name)


@dataclass(frozen=True)
class CifarSource:
    name: str = "cifar10"
    files: tuple[PublishedFile, ...] = (PublishedFile(ARCHIVE, "c32a1d4ab5d03f1284b67883e8d87530", algorithm="md5"),)
    mirrors: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
    classifier_size: int = 32

    def fetch(
        self, data: DataParams, raw: Path, digests: Mapping[str, str] | None, mirrors: Sequence[str] | None
    ) -> str:
        hint = f"offline, point data.source_dir at a folder holding {ARCHIVE} as published"
        files = with_digests(self.files, digests)
        return fetch_files(files, raw, data.source_dir, mirrors or self.mirrors, _check, hint)

    def read(self, data: DataParams, raw: Path, split: str) -> Images:
        path = raw / ARCHIVE
        if not path.is_file():
            raise DataError(f"{path}: missing: run `dcgan fetch` first")
        images = read_members(path, MEMBERS[split], str(path))
        return Images(images.pixels, images.labels, images.classes, {"archive": ARCHIVE, "members": MEMBERS[split]})


CIFAR10 = CifarSource()
