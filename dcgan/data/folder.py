"""A folder of the user's own images: PNG or JPEG, grey or colour, any size.

`dcgan fetch` copies `data.source_dir` into data/raw/folder (DVC versions it there). Each image is centre-cropped
to a square and resized to `data.image_size`; the data set is colour when any image is. Class subfolders, when
present, are the labels (their names, sorted); files at the top level then have no class. One image in ten
(the first tenth in the order of a hash of their paths, so adding images moves no other) is the test split.

Files that are not PNG or JPEG, cannot be decoded or have no class are reported by name, then skipped with a
count (`data.bad_images: skip`) or refused (`refuse`) before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcgan.config import DataParams
from dcgan.data.source import Images
from dcgan.errors import DataError, DiskError

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
TEST_SHARE = 10  # one image in ten
SHOWN = 10  # bad files named in a message


@dataclass(frozen=True)
class FolderSource:
    name: str = "folder"
    classifier_size: int = 32

    def fetch(
        self, data: DataParams, raw: Path, digests: Mapping[str, str] | None, mirrors: Sequence[str] | None
    ) -> str:
        if not data.source_dir:
            raise DataError("data.dataset is 'folder': set data.source_dir to the folder of your images")
        source = Path(data.source_dir)
        if not source.is_dir():
            raise DataError(f"{source}: data.source_dir is not a folder")
        if _listing(source) == _listing(raw):
            log.info("%s: same files as %s", raw, source)
        else:
            _copy_tree(source, raw)
        return f"folder {source} ({len(_listing(raw))} files)"

    def read(self, data: DataParams, raw: Path, split: str) -> Images:
        from PIL import Image

        if not raw.is_dir():
            raise DataError(f"{raw}: missing: run `dcgan fetch` first")
        files = sorted(p.relative_to(raw) for p in raw.rglob("*") if p.is_file() and not _hidden(p.relative_to(raw)))
        labelled = any(len(f.parts) > 1 for f in files)
        bad: dict[Path, str] = {}
        images: list[Path] = []
        for f in files:
            if f.suffix.lower() not in EXTENSIONS:
                bad[f] = "not a PNG or JPEG file"
            elif labelled and len(f.parts) == 1:
                bad[f] = "at the top level, outside the class folders"
            else:
                images.append(f)
        colour = False
        for f in list(images):
            try:
                with Image.open(raw / f) as im:
                    colour |= im.mode not in GREY_MODES
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                bad[f] = f"cannot be read: {err}"
                images.remove(f)
        classes = tuple(sorted({f.parts[0] for f in images})) if labelled else ()
        by_hash = sorted(images, key=lambda f: hashlib.sha256(f.as_posix().encode()).hexdigest())
        n_test = max(1, len(by_hash) // TEST_SHARE)
        chosen = sorted(by_hash[:n_test] if split == "test" else by_hash[n_test:])

        if split != "train":
            bad = {}  # reported once, with the training split
        pixels, labels = [], []
        for f in chosen:
            try:
                pixels.append(_decode(raw / f, data.image_size, colour))
                labels.append(classes.index(f.parts[0]) if labelled else 0)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                bad[f] = f"cannot be decoded: {err}"
        _report(bad, raw, data)
        if not pixels:
            raise DataError(f"{raw}: no usable images for the {split} split (needs at least 2 images in all)")
        stacked = np.stack(pixels)  # N x C x S x S
        skipped = sorted(str(f) for f in bad)
        provenance = {"files": len(pixels), "skipped": skipped}
        return Images(stacked, np.array(labels, dtype=np.int64) if labelled else None, classes, provenance)


def _decode(path: Path, size: int, colour: bool) -> np.ndarray:
    """One image as uint8 C x size x size: EXIF orientation applied, centre-cropped square, resized."""
    from PIL import Image, ImageOps

    with Image.open(path) as file:
        file.load()
        image = ImageOps.exif_transpose(file)
        if image.mode.startswith("I;16") or image.mode in {"I", "F"}:  # 16-bit or float grey: to 8 bits by range
            values = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode != "F" and values.max() > 255 else max(values.max(), 1.0)
            image = Image.fromarray(np.round(values / top * 255).astype(np.uint8), mode="L")
        image = ImageOps.fit(image.convert("RGB" if colour else "L"), (size, size), Image.Resampling.LANCZOS)
        array = np.asarray(image, dtype=np.uint8)
    return array.transpose(2, 0, 1) if colour else array[None]


def _report(bad: dict[Path, str], raw: Path, data: DataParams) -> None:
    if not bad:
        return
    named = "; ".join(f"{f}: {why}" for f, why in sorted(bad.items())[:SHOWN])
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    if data.bad_images == "refuse":
        raise DataError(f"{raw}: {len(bad)} file(s) refused ({named}{more}); remove them, or set data.bad_images=skip")
    log.warning("%s: skipped %d file(s): %s%s", raw, len(bad), named, more)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)  # .DS_Store, .git, editors' files


def _listing(folder: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, SHA-256) of every file under `folder` ({} when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not _hidden(p.relative_to(folder))
    }


def _copy_tree(source: Path, raw: Path) -> None:
    """Replace `raw` by a copy of `source`, whole: a failed copy leaves the earlier `raw` as it was."""
    staging = raw.with_name(f".{raw.name}.incoming")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        raw.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, staging, ignore=lambda _, names: [n for n in names if n.startswith(".")])
        if raw.exists():
            old = raw.with_name(f".{raw.name}.old")
            os.replace(raw, old)
            os.replace(staging, raw)
            shutil.rmtree(old)
        else:
            os.replace(staging, raw)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise DiskError(f"{raw}: could not copy {source} there ({err.strerror or err}); nothing was changed") from None


FOLDER = FolderSource()
