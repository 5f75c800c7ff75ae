"""The champion where programs call it: MLflow's own model server (`mlflow models serve`) on a tiny run's
champion, real HTTP requests against it, and the model card the registry shows."""

from __future__ import annotations

import httpx
import mlflow
import numpy as np
import onnxruntime as ort
import pytest

from dcgan.classifier import train_classifier
from dcgan.config import Paths
from dcgan.data import prepare
from dcgan.evaluate import evaluate
from dcgan.export import CHAMPION, REGISTERED_MODEL, export
from dcgan.tracking import tracking_uri
from dcgan.train import train

from .conftest import Processes, free_port, user_env, wait_until

CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"


@pytest.fixture
def champion(project: Paths, tiny) -> Paths:
    """A tiny project taken through every stage: version 1 of dcgan-generator, the champion."""
    prepare(tiny, project)
    train_classifier(tiny, project)
    train(tiny, project)
    evaluate(tiny, project)
    export(tiny, project)
    return project


def test_the_registry_shows_a_model_card_on_the_model_and_the_version(champion: Paths):
    client = mlflow.MlflowClient(tracking_uri(champion))
    card = client.get_registered_model(REGISTERED_MODEL).description
    assert "trained on **mnist** (10 classes: 0, 1, 2" in card
    assert "**Input** `z`: float32, N x 8 x 1 x 1" in card and "**Output** `images`: float32, N x 1 x 16 x" in card
    assert f"dcgan generate --model {CHAMPION_URI}" in card and "mlflow models serve -m" in card
    assert f"dcgan web build --model {CHAMPION_URI} && dcgan web serve" in card
    version = client.get_model_version(REGISTERED_MODEL, "1")
    assert f"MLflow run `{version.run_id}`" in version.description
    assert "| FID (lower is better) |" in version.description and "ONNX parity: max abs error" in version.description
    # The card's Python recipe: the downloaded model holds model.onnx, with inputs and outputs named as it says.
    folder = mlflow.artifacts.download_artifacts(CHAMPION_URI, tracking_uri=tracking_uri(champion))
    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z"] and [o.name for o in session.get_outputs()] == ["images"]


def test_mlflow_models_serve_answers_for_the_champion(champion: Paths, processes: Processes):
    port = free_port()
    env = user_env(MLFLOW_TRACKING_URI=tracking_uri(champion))
    command = ["mlflow", "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local"]
    processes.start("serve", [*command, "--host", "127.0.0.1", "--port", str(port)], cwd=champion.root, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/ping").status_code == 200, "mlflow models serve", processes)

    z = np.random.default_rng(0).standard_normal((5, 8, 1, 1), dtype=np.float32)
    session = ort.InferenceSession(str(champion.models / "generator.onnx"), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["images"], {"z": z})
    for body in ({"inputs": {"z": z.tolist()}}, {"inputs": z.tolist()}):  # named, and the one tensor unnamed
        answer = httpx.post(f"{url}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        images = np.array(answer.json()["predictions"]["images"], dtype=np.float32)
        assert images.shape == (5, 1, 16, 16) and np.abs(images - expected).max() <= 1e-6

    wrong_shape = httpx.post(f"{url}/invocations", json={"inputs": {"z": np.zeros((2, 5, 1, 1)).tolist()}})
    assert wrong_shape.status_code == 400
    assert "Shape of input (2, 5, 1, 1) does not match expected shape (-1, 8, 1, 1)" in wrong_shape.text
    not_numbers = httpx.post(f"{url}/invocations", json={"inputs": {"z": [[["a"]]]}})
    assert not_numbers.status_code == 400
    not_json = httpx.post(f"{url}/invocations", content=b"z=1", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
