"""Meaningful directions in the latent space, GANSpace-style (Härkönen et al., NeurIPS 2020).

z is isotropic, so its own principal directions mean nothing. The generator's first layer is not: principal
components of its activations (ConvTranspose, BatchNorm, ReLU: C x 4 x 4) over many samples are the ways its
images vary most. Each component is carried back to z by linear regression of z on the samples' component
coordinates, as GANSpace does for BigGAN, and scaled to one standard deviation of that coordinate, so moving z
by `s` times a direction moves the image about `s` standard deviations along that component.

Computed from the ONNX file alone (onnxruntime and numpy), so that any exported or registered generator works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dcgan.errors import DcganError

BATCH = 256


def latent_directions(model: Path, count: int = 8, samples: int = 2048, seed: int = 0) -> dict[str, Any]:
    """The first `count` directions of the generator at `model`: {"layer", "samples", "seed", "directions":
    [{"z": [z_dim floats], "explained_variance": fraction of the layer's variance}, ...]}."""
    import onnxruntime as ort

    graph = onnx.load(model)
    layer = next((node.output[0] for node in graph.graph.node if node.op_type == "Relu"), None)
    if layer is None:
        raise DcganError(f"{model}: no ReLU in the graph: not a DCGAN generator whose first layer can be measured")
    graph.graph.output.append(onnx.helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    z_dim = session.get_inputs()[0].shape[1]

    z = np.random.default_rng(seed).standard_normal((samples, z_dim, 1, 1), dtype=np.float32)
    activations = np.concatenate(
        [
            session.run([layer], {"z": chunk})[0].reshape(len(chunk), -1)
            for chunk in np.split(z, range(BATCH, samples, BATCH))
        ]
    ).astype(np.float64)  # N x (C * 4 * 4)
    centred = activations - activations.mean(0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    count = min(count, len(singular))
    coordinates = centred @ components[:count].T  # N x count
    # z ~ coordinates @ to_z: the least-squares map from component coordinates back to the latent space.
    to_z, *_ = np.linalg.lstsq(coordinates, z.reshape(samples, z_dim).astype(np.float64), rcond=None)
    directions = to_z * coordinates.std(0)[:, None]  # count x z_dim: one standard deviation of each component
    variance = singular**2 / (singular**2).sum()
    return {
        "layer": layer,
        "samples": samples,
        "seed": seed,
        "directions": [
            {"z": [round(float(v), 6) for v in direction], "explained_variance": round(float(share), 6)}
            for direction, share in zip(directions, variance[:count], strict=True)
        ],
    }
