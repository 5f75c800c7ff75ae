"""safetensors files whose bytes are a function of their content.

safetensors writes a metadata map of several keys in a random order, so two identical saves could differ byte
for byte, and DVC would see a change. We keep all metadata under one key, as one JSON object with sorted keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dcgan.errors import CheckpointError
from dcgan.files import atomic_path

METADATA_KEY = "dcgan"


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any]) -> None:
    """Write `tensors` atomically, with `metadata` (JSON-serializable)."""
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, tmp, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata `save_tensors` wrote ({} for a file without it)."""
    with safe_open(path, framework="pt") as f:
        return json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))


def load_weights(module: nn.Module, path: Path, stage: str) -> None:
    """Load `path` into `module`; a missing file or weights of another shape is a CheckpointError naming `path`
    and the `dcgan` stage that writes it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: run `dcgan {stage}` first")
    try:
        module.load_state_dict(load_file(path))
    except (RuntimeError, OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: does not fit this {type(module).__name__} (other params?): {err}") from None
