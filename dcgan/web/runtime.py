"""onnxruntime-web, pinned: the three files of one npm release that a page without a bundler needs.

`ort.wasm.min.mjs` (the API, wasm backend only) loads `ort-wasm-simd-threaded.mjs`, which loads the 14 MB
`ort-wasm-simd-threaded.wasm`; the three must come from one version and lie side by side (a missing one reads
"no available backend found" in the browser). They are taken from the release's npm tarball, which is checked
against npm's published SHA-512, and each file against its SHA-256, then kept in a cache folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from dcgan.errors import DcganError, DownloadError
from dcgan.files import write_bytes_atomic

log = logging.getLogger(__name__)

VERSION = "1.30.0"
NPM_REGISTRY = "https://registry.npmjs.org"
# npm's `dist.integrity` of onnxruntime-web-1.30.0.tgz (sha512, here in hex).
TARBALL_SHA512 = (
    "ab4cbe26baedba45d2cec05610c71c55fa97db92d19a8b171c5f8269126683ca"
    "590a5cdc57bb2f35ce2b298de32f4d956fb42644c0ecd528a0a91e025c07ca61"
)
FILES = {  # name in the package's dist/ -> SHA-256
    "ort.wasm.min.mjs": "219e6a1fc8a9938268d18efca3c91d310bd2f4a59bbd13744df5b2b7fc6cee3b",
    "ort-wasm-simd-threaded.mjs": "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b",
    "ort-wasm-simd-threaded.wasm": "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
}
DOWNLOAD_TIMEOUT_S = 120


def cache_dir() -> Path:
    """Where the checked files are kept: $DCGAN_CACHE, else ~/.cache/dcgan; one folder per version."""
    root = Path(os.environ.get("DCGAN_CACHE") or Path.home() / ".cache" / "dcgan")
    return root / f"onnxruntime-web-{VERSION}"


def runtime_files(registry: str | None = None) -> dict[str, Path]:
    """The three files, checked, downloading the release once from `registry` ($DCGAN_NPM_REGISTRY, else npm's)."""
    folder = cache_dir()
    paths = {name: folder / name for name in FILES}
    if all(_sha256(path) == FILES[name] for name, path in paths.items()):
        return paths
    registry = registry or os.environ.get("DCGAN_NPM_REGISTRY") or NPM_REGISTRY
    url = f"{registry.rstrip('/')}/onnxruntime-web/-/onnxruntime-web-{VERSION}.tgz"
    log.info("downloading onnxruntime-web %s from %s", VERSION, url)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            tarball = response.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise DownloadError(
            f"{url}: cannot download onnxruntime-web {VERSION} ({err}); set DCGAN_NPM_REGISTRY to a mirror of the"
            f" npm registry, or put its dist/ files {', '.join(FILES)} in {folder}"
        ) from None
    actual = hashlib.sha512(tarball).hexdigest()
    if actual != TARBALL_SHA512:
        raise DcganError(f"{url}: SHA-512 mismatch: expected {TARBALL_SHA512}, got {actual}; nothing was written")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        contents = {name: _member(archive, f"package/dist/{name}", url) for name in FILES}
    for name, data in contents.items():
        if hashlib.sha256(data).hexdigest() != FILES[name]:
            raise DcganError(f"{url}: dist/{name} does not have its pinned SHA-256; nothing was written")
    for name, data in contents.items():
        write_bytes_atomic(paths[name], data)
    return paths


def _member(archive: tarfile.TarFile, name: str, url: str) -> bytes:
    try:
        member = archive.extractfile(name)  # read as bytes; nothing is extracted to disk by the archive's paths
    except KeyError:
        member = None
    if member is None:
        raise DcganError(f"{url}: no file {name} in the archive")
    return member.read()


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
