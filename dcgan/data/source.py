"""What every data set gives the pipeline: its files fetched into data/raw/<dataset>, and a split of them read
as uint8 pixels with labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dcgan.config import DataParams


@dataclass(frozen=True)
class Images:
    pixels: np.ndarray  # uint8 N x C x H x W, C = 1 (grey) or 3 (RGB)
    labels: np.ndarray | None  # int64 N, indices into `classes`; None for an unlabelled folder
    classes: tuple[str, ...]  # () when unlabelled
    provenance: dict[str, Any]  # what the pixels were read from, for the prepared file's metadata


class Source(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def classifier_size(self) -> int:
        """The size the evaluation's classifier sees images at: the data set's own."""
        ...

    def fetch(
        self, data: DataParams, raw: Path, digests: Mapping[str, str] | None, mirrors: Sequence[str] | None
    ) -> str:
        """Materialize the data set's files in `raw` (checked); returns where they came from, in words."""
        ...

    def read(self, data: DataParams, raw: Path, split: str) -> Images:
        """The `split` ("train" or "test") of the files in `raw`."""
        ...
