"""Torch-free sampling from the exported generator: onnxruntime, numpy and pillow only.

    dcgan generate --model models/generator.onnx -n 64 --seed 0 --out grid.png [--individual DIR] [--truncation 2]

`--model` takes a local .onnx file or a `models:/NAME@ALIAS` / `models:/NAME/VERSION` URI, which MLflow
downloads. Nothing on this path imports torch.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcgan.errors import DcganError

log = logging.getLogger(__name__)

MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class GenerateResult:
    grid: Path
    count: int
    individual: Path | None


def generate_images(
    model: str,
    n: int,
    seed: int,
    out: Path,
    individual: Path | None = None,
    truncation: float | None = None,
) -> GenerateResult:
    """Sample `n` images from the ONNX generator at `model`; write a grid PNG (and one PNG each), grey or RGB
    as the model makes them."""
    if not 1 <= n <= MAX_SAMPLES:
        raise DcganError(f"-n {n}: expected between 1 and {MAX_SAMPLES} samples")
    if truncation is not None and truncation <= 0:
        raise DcganError(f"--truncation {truncation}: expected a positive number of standard deviations")
    session = _session(_local_model(model))
    (z_input,) = session.get_inputs()
    z_dim = z_input.shape[1]
    if not isinstance(z_dim, int):
        raise DcganError(f"{model}: input {z_input.name} has no fixed latent size ({z_input.shape})")

    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, z_dim, 1, 1), dtype=np.float32)
    if truncation is not None:  # the truncation trick: resample latents beyond +-truncation
        while (outside := np.abs(z) > truncation).any():
            z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
    (images,) = session.run(None, {z_input.name: z})  # N x C x S x S in [-1, 1], C = 1 grey or 3 colour
    pixels = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)  # N x S x S x C
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]  # N x S x S: a grey PNG

    _save_png(_grid(pixels), out)
    if individual is not None:
        for i, image in enumerate(pixels):
            _save_png(image, individual / f"{i:05d}.png")
    log.info("%s: %d samples (seed %d)", out, n, seed)
    return GenerateResult(out, n, individual)


def _local_model(model: str) -> Path:
    if model.startswith("models:/"):
        import mlflow

        try:
            folder = Path(mlflow.artifacts.download_artifacts(model, dst_path=tempfile.mkdtemp(prefix="dcgan-")))
        except Exception as err:  # MLflow raises several kinds for an unknown name, version or alias
            raise DcganError(f"{model}: cannot download it from MLflow: {err}") from None
        found = sorted(folder.rglob("*.onnx"))
        if not found:
            raise DcganError(f"{model}: no .onnx file in the downloaded model ({folder})")
        return found[0]
    path = Path(model)
    if not path.is_file():
        raise DcganError(f"{path}: no such model file")
    return path


def _session(path: Path):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types for unreadable or invalid models
        raise DcganError(f"{path}: not a valid ONNX model: {err}") from None


def _grid(pixels: np.ndarray, padding: int = 2) -> np.ndarray:
    n, size = len(pixels), pixels.shape[1]  # N x S x S (grey) or N x S x S x 3
    cols = min(n, 8) if n <= 64 else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    step = size + padding
    grid = np.zeros((rows * step + padding, cols * step + padding, *pixels.shape[3:]), dtype=np.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, cols)
        grid[padding + r * step : padding + r * step + size, padding + c * step : padding + c * step + size] = image
    return grid


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    from dcgan.files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
