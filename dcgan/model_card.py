"""The model card in the MLflow registry: the description the UI shows on the registered model and on each version.

`export` writes both. The model's card says what it generates, its input and output, and how to sample it with
`dcgan generate`, from Python, in the browser and over REST; a version's card says how it was trained and
evaluated, with its figures, its MLflow run, git commit and data.
"""

from __future__ import annotations

from typing import Any

from dcgan.config import Params

# The figures a version's card lists, in this order, with what they mean.
FIGURES = {
    "fid": "FID (lower is better)",
    "kid": "KID",
    "inception_score": "Inception Score",
    "precision": "precision",
    "recall": "recall",
    "digits_covered": "classes covered",
}


def model_card(name: str, params: Params, channels: int, classes: list[str]) -> str:
    z, size = params.model.z_dim, params.data.image_size
    colour = "colour (RGB)" if channels == 3 else "grey"
    kinds = f"{len(classes)} classes: {', '.join(classes)}" if classes else "no labels"
    return f"""A DCGAN generator (Radford, Metz and Chintala, 2015) trained on **{params.data.dataset}** ({kinds}):
it turns a latent vector into a {size} x {size} {colour} image. Each version is exported to ONNX and checked for
parity against the PyTorch model; the alias `champion` names the version with the best FID.

**Input** `z`: float32, N x {z} x 1 x 1, standard normal. **Output** `images`: float32, N x {channels} x {size} x
{size}, in [-1, 1] (a pixel is `(x + 1) * 127.5`).

Sample it:

    dcgan generate --model models:/{name}@champion -n 64 --out grid.png

From Python (onnxruntime only):

    import mlflow, numpy as np, onnxruntime as ort
    path = mlflow.artifacts.download_artifacts("models:/{name}@champion")
    session = ort.InferenceSession(f"{{path}}/model.onnx")
    z = np.random.default_rng(0).standard_normal((16, {z}, 1, 1), dtype=np.float32)
    (images,) = session.run(["images"], {{"z": z}})

In the browser (onnxruntime-web; nothing runs on a server), on http://127.0.0.1:8000/:

    dcgan web build --model models:/{name}@champion && dcgan web serve

Over REST (MLflow's model server, on 127.0.0.1):

    mlflow models serve -m models:/{name}@champion --env-manager local --port 5001
    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
      -d '{{"inputs": {{"z": <N x {z} x 1 x 1 nested lists>}}}}'   # -> {{"predictions": {{"images": ...}}}}
"""


def version_card(
    params: Params, metrics: dict[str, float], parity: dict[str, Any], run_id: str, commit: str, data_md5: str
) -> str:
    figures = "\n".join(
        f"| {label} | {metrics[key]:.4g} | {metrics[f'real_{key}']:.4g} |"
        for key, label in FIGURES.items()
        if key in metrics and f"real_{key}" in metrics
    )
    train, model = params.train, params.model
    return f"""Trained on {params.data.dataset} at {params.data.image_size} x {params.data.image_size}
({params.data.train_limit or "all the"} training images), seed {params.seed}: {train.epochs} epochs of batch
{train.batch_size}, Adam lr {train.lr}, betas {list(train.betas)}, z {model.z_dim}, widths G {model.g_width} /
D {model.d_width}. MLflow run `{run_id}`, git commit `{commit}`, prepared data (DVC md5) `{data_md5}`.

Evaluated on {params.evaluate.n_samples} samples against the test set with the data set's own classifier
(accuracy {metrics.get("classifier_accuracy", float("nan")):.4f}), the generator as exported (BatchNorm
statistics re-estimated); beside it, real training images (the ceiling):

| figure | this version | real images |
| --- | --- | --- |
{figures}

ONNX parity: max abs error {parity["max_abs_error"]:.3g} on {parity["provider"]} (tolerance {parity["tolerance"]:g}).
"""
