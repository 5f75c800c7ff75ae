"""Files as their publishers distribute them: copied from a local folder or downloaded from a mirror, each
checked against its published checksum before it is written to data/raw/<dataset>.

A file that fails a check is never written; a file already present with the right digest is kept.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dcgan.errors import DataError, DownloadError
from dcgan.files import write_bytes_atomic

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60
ALGORITHM_NAMES = {"sha256": "SHA-256", "md5": "MD5"}


@dataclass(frozen=True)
class PublishedFile:
    name: str  # the file in data/raw/<dataset>
    digest: str  # hex digest of the file as stored, as its publisher gives it
    algorithm: str = "sha256"  # or "md5"
    gunzip: bool = False  # published gzipped, stored uncompressed (MNIST's originals: digests of the IDX bytes)

    @property
    def remote_name(self) -> str:
        return f"{self.name}.gz" if self.gunzip else self.name


def with_digests(files: Sequence[PublishedFile], digests: Mapping[str, str] | None) -> list[PublishedFile]:
    """`files` with the digests in `digests` (name -> hex) in place of the published ones (test fixtures)."""
    return [replace(f, digest=digests[f.name]) if digests and f.name in digests else f for f in files]


def hexdigest(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def fetch_files(
    files: Sequence[PublishedFile],
    raw: Path,
    source_dir: str | None,
    mirrors: Sequence[str],
    check: Callable[[bytes, str], None],
    offline_hint: str,
) -> str:
    """Materialize `files` in `raw` from `source_dir` (a folder of them, gzipped or not) or else `mirrors`;
    `check(data, name)` validates the format first. Returns where they came from, in words."""
    source = f"folder {source_dir}" if source_dir else "download"
    for file in files:
        target = raw / file.name
        if target.is_file() and hexdigest(target.read_bytes(), file.algorithm) == file.digest:
            log.info("%s: present, digest ok", target)
            continue
        data = _read_local(Path(source_dir), file) if source_dir else _download(file, mirrors, offline_hint)
        check(data, file.name)
        actual = hexdigest(data, file.algorithm)
        if actual != file.digest:
            algorithm = ALGORITHM_NAMES[file.algorithm]
            raise DataError(f"{file.name}: {algorithm} mismatch: expected {file.digest}, got {actual} (from {source})")
        write_bytes_atomic(target, data)
        log.info("%s: written from %s", target, source)
    return source


def _read_local(folder: Path, file: PublishedFile) -> bytes:
    candidates = (folder / file.name, folder / file.remote_name) if file.gunzip else (folder / file.name,)
    for candidate in candidates:
        if candidate.is_file():
            data = candidate.read_bytes()
            return gunzip(data, str(candidate)) if file.gunzip else data
    looked = " and ".join(c.name for c in candidates)
    raise DataError(f"{file.name}: missing from {folder} (looked for {looked})")


def _download(file: PublishedFile, mirrors: Sequence[str], offline_hint: str) -> bytes:
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{file.remote_name}"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                data = response.read()
            return gunzip(data, url) if file.gunzip else data
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            log.warning("%s: %s", url, err)
            failures.append(f"{url}: {err}")
    raise DownloadError(f"{file.name}: download failed from every mirror ({'; '.join(failures)}); {offline_hint}")


def gunzip(data: bytes, origin: str) -> bytes:
    """`data` uncompressed when it is gzip, else as it is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise DataError(f"{origin}: corrupt gzip: {err}") from None
