"""Fetch a data set's files and prepare them as uint8 tensors at the training size; load them in [-1, 1].

fetch:   data.source_dir or the publishers' mirrors -> data/raw/<dataset>/   (each file checked)
prepare: data/raw/<dataset> -> data/prepared/{train,test}.safetensors
         images uint8 N x C x S x S (C = 1 grey, 3 colour; bilinear, antialiased resize), labels N

uint8 is a quarter of float32 on disk, and loses nothing that matters: the images come from 8-bit pixels, and
the value loaded, q / 127.5 - 1, is within 1/255 of the resized pixel in [-1, 1]. All of the training set
still goes to the device at once (`load_prepared`), scaled there in one operation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from dcgan.config import DataParams, Params, Paths
from dcgan.data.datasets import DATASETS
from dcgan.errors import DataError
from dcgan.tensors import read_metadata, save_tensors

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class FetchResult:
    dataset: str
    raw: str
    source: str


@dataclass(frozen=True)
class PrepareResult:
    dataset: str
    counts: dict[str, int]  # split -> number of images
    image_size: int
    channels: int
    classes: list[str]


@dataclass(frozen=True)
class PreparedInfo:
    """What `prepare` recorded about the data: what the networks and the classifier are built for."""

    dataset: str
    image_size: int
    channels: int
    classes: list[str]  # [] for an unlabelled folder


def fetch(
    params: Params,
    paths: Paths,
    digests: Mapping[str, str] | None = None,
    mirrors: Sequence[str] | None = None,
) -> FetchResult:
    """Materialize `data.dataset`'s files in data/raw/<dataset>, each checked against its published checksum
    (or `digests`, name -> hex, for test fixtures). Files already present with the right digest are kept."""
    data = params.data
    raw = paths.raw(data.dataset)
    source = DATASETS[data.dataset].fetch(data, raw, digests, mirrors)
    return FetchResult(data.dataset, str(raw), source)


def prepare(params: Params, paths: Paths) -> PrepareResult:
    """data/raw/<dataset> -> uint8 images at `data.image_size` with their labels, both splits, in full
    (`data.train_limit` applies when training loads them, so it never needs another copy)."""
    data = params.data
    raw = paths.raw(data.dataset)
    read = {split: DATASETS[data.dataset].read(data, raw, split) for split in SPLITS}  # all checked, then written
    counts, channels = {}, 0
    classes: tuple[str, ...] = ()
    for split, images in read.items():
        channels, classes = images.pixels.shape[1], images.classes
        tensors = {"images": resize_uint8(images.pixels, data.image_size)}
        if images.labels is not None:
            dtype = torch.uint8 if len(classes) <= 256 else torch.int32
            tensors["labels"] = torch.from_numpy(images.labels).to(dtype)
        metadata = {
            "split": split,
            "dataset": data.dataset,
            "image_size": data.image_size,
            "channels": channels,
            "classes": list(classes),
            "count": len(images.pixels),
            "storage": "uint8 pixels: load as q / 127.5 - 1, in [-1, 1]",
            **images.provenance,
        }
        target = paths.prepared / f"{split}.safetensors"
        save_tensors(tensors, target, metadata)
        counts[split] = len(images.pixels)
        size = data.image_size
        log.info("%s: %d %s images at %dx%d, %d channel(s)", target, counts[split], data.dataset, size, size, channels)
    return PrepareResult(data.dataset, counts, data.image_size, channels, list(classes))


def resize_uint8(pixels: np.ndarray, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 N x C x H x W -> uint8 N x C x size x size (bilinear, antialiased, rounded), in chunks to bound
    memory; unchanged when already at that size."""
    if pixels.shape[-2:] == (size, size):
        return torch.from_numpy(np.ascontiguousarray(pixels))
    out = torch.empty(len(pixels), pixels.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, len(pixels), chunk):
        batch = torch.from_numpy(pixels[start : start + chunk].copy()).float().div_(255)  # B x C x H x W in [0, 1]
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return out


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], on their device."""
    return pixels.float().div_(127.5).sub_(1)


def prepared_info(paths: Paths, data: DataParams) -> PreparedInfo:
    """The prepared data's data set, size, channels and classes, refused when they are not what `data` asks."""
    path = paths.prepared / "train.safetensors"
    if not path.is_file():
        raise DataError(f"{path}: missing: run `dcgan prepare` first")
    try:
        meta = read_metadata(path)
    except (OSError, ValueError, SafetensorError) as err:
        raise DataError(f"{path}: not a prepared data file: {err}") from None
    if "dataset" not in meta:
        raise DataError(f"{path}: prepared by an older version (float32, no data set recorded): run `dcgan prepare`")
    found = PreparedInfo(meta["dataset"], meta["image_size"], meta["channels"], meta["classes"])
    if found.dataset != data.dataset:
        raise DataError(f"{path}: holds {found.dataset} but data.dataset is {data.dataset}: run `dcgan prepare`")
    if found.image_size != data.image_size:
        raise DataError(
            f"{path}: holds {found.image_size}x{found.image_size} images but data.image_size is {data.image_size}: "
            "run `dcgan prepare`"
        )
    return found


def load_prepared(
    paths: Paths, split: str, data: DataParams, limit: int | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prepared (images N x C x S x S float32 in [-1, 1], labels int64 N or None when unlabelled) of `split`
    on `device`: the first `limit` only, read alone, when given. Refuses data of another data set or size."""
    prepared_info(paths, data)
    path = paths.prepared / f"{split}.safetensors"
    try:
        with safe_open(path, framework="pt") as f:
            pixels = f.get_slice("images")[:limit]
            labels = f.get_slice("labels")[:limit].long() if "labels" in f.keys() else None  # noqa: SIM118
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise DataError(f"{path}: not a prepared data file: {err}") from None
    return unit_range(pixels.to(device)), labels


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled index order of one epoch, a pure function of (seed, epoch): resuming mid-epoch needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
