"""Write files so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dcgan.errors import DcganError, DiskError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On any error the temporary file is removed and `path` keeps its earlier content; an OSError (disk full,
    file too large, no permission) becomes a DiskError naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise _disk_error(path, err) from err
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> the mode a plain open() would give
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise _disk_error(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)


def _disk_error(path: Path, err: OSError) -> DiskError:
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    return DiskError(f"{path}: could not write it ({err.strerror or err}); {kept}")


def check_writable(folder: Path, advice: str) -> None:
    """Make sure files can be created in `folder` (made if missing) before work that would fail there later;
    else a DiskError naming the folder, the cause and `advice`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise DiskError(f"{folder}: cannot write there ({err.strerror or err}): {advice}") from None


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files of `path` that a process killed while writing it (SIGKILL, power loss) left."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json_number(path: Path, key: str, stage: str) -> float:
    """`key` of the JSON report at `path`; its absence is a DcganError naming the `dcgan` stage that writes it."""
    try:
        return float(json.loads(path.read_text())[key])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DcganError(f"{path}: no {key} ({err!r}): run `dcgan {stage}` first") from None
