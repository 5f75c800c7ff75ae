"""Pictures of generated images: one grid, as a tensor for MLflow or a PNG for reports/."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from dcgan.files import atomic_path
from dcgan.models import Generator, sample


def sample_grid(generator: Generator, z: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """G(z) in eval mode tiled into one H x W x 3 image in [0, 1]."""
    return tile(sample(generator, z), nrow)


def tile(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """N x C x S x S in [-1, 1] (C = 1 or 3) -> one H x W x 3 image in [0, 1], `nrow` images a row."""
    grid = make_grid(images, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))  # 3 x H x W
    return grid.permute(1, 2, 0)


def save_png(grid: torch.Tensor, path: Path) -> None:
    pixels = grid.mul(255).round().to(torch.uint8).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
