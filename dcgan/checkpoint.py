"""Training checkpoints: written atomically, loaded without unpickling (`weights_only=True`).

A checkpoint holds everything a resumed run needs to continue bit for bit: both models, both optimizers, the
step, the noise generator's RNG state, the params it was trained with and the MLflow run it logs to. Each set of
training settings has its own folder, so a run with other settings (a `dvc exp run -S ...`) never overwrites
another's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from dcgan.config import Params, Paths
from dcgan.errors import CheckpointError
from dcgan.files import atomic_path

# Settings that change nothing about the weights at a given step: a checkpoint stays valid when they change.
# (More epochs continue a run; the epoch order is a function of the seed and the epoch alone.)
RESUMABLE_KEYS = {
    "train.epochs",
    "train.checkpoint_every",
    "train.log_every",
    "train.health_window",
    "train.stop_unhealthy",
    "train.rdzv_endpoint",
    "train.max_restarts",
}
TRAINING_SECTIONS = ("seed", "data.", "model.", "train.")


def checkpoint_path(params: Params, paths: Paths) -> Path:
    """models/checkpoints/<digest of the training settings>/last.pt."""
    settings = json.dumps(training_settings(params.flat()), sort_keys=True)
    return paths.checkpoints / hashlib.sha256(settings.encode()).hexdigest()[:12] / "last.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as err:  # torch's C++ writer reports a failed write (disk full) as a RuntimeError
            raise OSError(f"torch.save failed: {str(err).splitlines()[0]}") from err


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"{path}: not a usable checkpoint (only plain tensors and containers are loaded): {err}"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "params" not in state:
        raise CheckpointError(f"{path}: not a dcgan training checkpoint")
    return state


def training_settings(flat_params: dict[str, Any]) -> dict[str, Any]:
    # A decaying learning rate is a function of the run's length: there, more epochs are another run.
    resumable = (
        RESUMABLE_KEYS - {"train.epochs"} if flat_params.get("train.lr_decay_start") is not None else RESUMABLE_KEYS
    )
    return {
        key: value for key, value in flat_params.items() if key.startswith(TRAINING_SECTIONS) and key not in resumable
    }


def resume_mismatch(state: dict[str, Any], params: Params) -> list[str]:
    """The settings on which `state` and `params` differ, as 'key: checkpoint -> now'; empty when resumable."""
    saved = training_settings(state["params"])
    now = training_settings(params.flat())
    return [f"{key}: {saved.get(key)!r} -> {now.get(key)!r}" for key in sorted(now) if saved.get(key) != now.get(key)]
