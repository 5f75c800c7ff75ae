"""The MNIST classifier whose features and class probabilities the evaluation measures generated digits with.

Inception weights cannot be downloaded here, and a classifier trained on the data set is the usual choice for
MNIST. It sees images exactly as the generator makes them (data.image_size, [-1, 1]) and resizes them to
MNIST's 28 x 28 itself, so real and generated images take the same path.

    data/raw/mnist -> models/classifier.safetensors, reports/classifier.json (test accuracy)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dcgan.config import Params, Paths
from dcgan.data import SPLIT_PREFIX, read_idx, to_unit_range
from dcgan.files import write_json_atomic
from dcgan.tensors import load_weights, save_tensors

log = logging.getLogger(__name__)

N_FEATURES = 128
MNIST_SIZE = 28


class Classifier(nn.Module):
    """A small CNN: two conv blocks, a 128-wide penultimate layer (the features), 10 logits."""

    num_features = N_FEATURES

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(True), nn.MaxPool2d(2),  # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(True), nn.MaxPool2d(2),  # 64 x 7 x 7
        )  # fmt: skip
        self.features_head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, N_FEATURES), nn.ReLU())
        self.logits_head = nn.Sequential(nn.Dropout(0.25), nn.Linear(N_FEATURES, 10))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """N x 1 x S x S in [-1, 1] -> N x 128."""
        if images.shape[-1] != MNIST_SIZE:
            images = F.interpolate(images, size=(MNIST_SIZE, MNIST_SIZE), mode="bilinear", antialias=True)
        return self.features_head(self.conv(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_head(self.features(images))  # N x 10


@dataclass(frozen=True)
class ClassifierResult:
    test_accuracy: float
    path: Path


def train_classifier(params: Params, paths: Paths) -> ClassifierResult:
    """Train on all MNIST training images (data.train_limit does not apply), report the test accuracy."""
    cfg, size = params.classifier, params.data.image_size
    train_x, train_y = _split(paths, "train", size)
    test_x, test_y = _split(paths, "test", size)

    torch.manual_seed(params.seed)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * ((len(train_x) + cfg.batch_size - 1) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    rng = torch.Generator().manual_seed(params.seed)
    model.train()
    with tqdm(total=steps, unit="step", desc="classifier", mininterval=1.0) as bar:
        for _ in range(cfg.epochs):
            for batch in torch.randperm(len(train_x), generator=rng).split(cfg.batch_size):
                loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update()
    model.eval()
    accuracy = (predict(model, test_x).argmax(1) == test_y).float().mean().item()

    target = paths.models / "classifier.safetensors"
    save_tensors(model.state_dict(), target, {"image_size": size, "test_accuracy": accuracy})
    write_json_atomic(paths.reports / "classifier.json", {"classifier_accuracy": accuracy})
    log.info("%s: test accuracy %.4f", target, accuracy)
    return ClassifierResult(accuracy, target)


def load_classifier(path: Path) -> Classifier:
    model = Classifier()
    load_weights(model, path, "classifier")
    return model.eval()


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Class probabilities, N x 10."""
    return torch.cat([model(chunk).softmax(1) for chunk in images.split(batch)])


@torch.no_grad()
def embed(model: Classifier, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x 128, class probabilities N x 10) in one pass."""
    features = torch.cat([model.features(chunk) for chunk in images.split(batch)])
    return features, model.logits_head(features).softmax(1)


def _split(paths: Paths, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = SPLIT_PREFIX[split]
    images = read_idx(paths.raw / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(paths.raw / f"{prefix}-labels-idx1-ubyte")
    return to_unit_range(images, size), torch.from_numpy(labels.astype("int64"))
