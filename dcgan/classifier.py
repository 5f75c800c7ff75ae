"""The classifier whose features and class probabilities the evaluation measures generated images with.

Inception weights cannot be downloaded here, and a classifier trained on the data set is the usual choice for
MNIST; each data set gets its own, trained on its labels, so FID, KID, IS, precision/recall and class coverage
mean the same thing for every one. It sees images exactly as the generator makes them (data.image_size,
[-1, 1]) and resizes them to the data set's own size (28 x 28 for the IDX sets, 32 x 32 for CIFAR-10 and
folders) itself, so real and generated images take the same path.

A folder of images without class subfolders has no labels to learn: there the same network learns to tell
which way up an image is (0, 90, 180 or 270 degrees: the self-supervised task of Gidaris, Singh and Komodakis,
ICLR 2018), and its features measure FID, KID and precision/recall; the Inception Score and class coverage,
which need classes, do not exist for such data.

    data/prepared -> models/classifier.safetensors, reports/classifier.json (test accuracy)
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
from dcgan.data import load_prepared, prepared_info
from dcgan.data.datasets import DATASETS
from dcgan.files import write_json_atomic
from dcgan.tensors import load_weights, read_metadata, save_tensors

log = logging.getLogger(__name__)

N_FEATURES = 128
ROTATIONS = ["0°", "90°", "180°", "270°"]  # the classes of the rotation task, for data without labels


class Classifier(nn.Module):
    """A small CNN: two conv blocks, a 128-wide penultimate layer (the features), one logit per class.

    MNIST's (the defaults): 1 channel, the ten digits, images measured at 28 x 28.
    """

    num_features = N_FEATURES

    def __init__(
        self, channels: int = 1, classes: list[str] | None = None, size: int = 28, task: str = "labels"
    ) -> None:
        super().__init__()
        self.classes = classes or list("0123456789")  # the names of its outputs: the data set's, or ROTATIONS
        self.size = size
        self.task = task  # "labels", or "rotation" for data without labels
        n_classes = len(self.classes)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(True), nn.MaxPool2d(2),  # 32 x S/2 x S/2
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(True), nn.MaxPool2d(2),  # 64 x S/4 x S/4
        )  # fmt: skip
        flat = 64 * (size // 4) ** 2
        self.features_head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(flat, N_FEATURES), nn.ReLU())
        self.logits_head = nn.Sequential(nn.Dropout(0.25), nn.Linear(N_FEATURES, n_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """N x C x S x S in [-1, 1] -> N x 128."""
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        return self.features_head(self.conv(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_head(self.features(images))  # N x classes


@dataclass(frozen=True)
class ClassifierResult:
    test_accuracy: float
    path: Path


def train_classifier(params: Params, paths: Paths) -> ClassifierResult:
    """Train on all prepared training images (data.train_limit does not apply), report the test accuracy: of the
    labels, or for data without labels of the rotation task."""
    cfg, data = params.classifier, params.data
    info = prepared_info(paths, data)
    train_x, train_y = load_prepared(paths, "train", data)
    test_x, test_y = load_prepared(paths, "test", data)
    task, classes = "labels", info.classes
    if train_y is None or test_y is None:
        task, classes = "rotation", ROTATIONS
        (train_x, train_y), (test_x, test_y) = rotated(train_x), rotated(test_x)
        log.warning(
            "%s: no labels (no class subfolders): the classifier learns which way up each image is; FID, KID and "
            "precision/recall measure with its features, the Inception Score and class coverage do not exist",
            paths.raw(data.dataset),
        )

    torch.manual_seed(cfg.seed)
    size = DATASETS[data.dataset].classifier_size
    model = Classifier(info.channels, classes, size, task)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * ((len(train_x) + cfg.batch_size - 1) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    rng = torch.Generator().manual_seed(cfg.seed)
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
    shape = {"channels": info.channels, "classes": classes, "size": size, "task": task}
    metadata = {"dataset": data.dataset, "image_size": data.image_size, **shape}
    save_tensors(model.state_dict(), target, {**metadata, "test_accuracy": accuracy})
    write_json_atomic(paths.reports / "classifier.json", {"classifier_accuracy": accuracy})
    log.info("%s: test accuracy %.4f", target, accuracy)
    return ClassifierResult(accuracy, target)


def load_classifier(path: Path) -> Classifier:
    """The classifier `train_classifier` saved, built for the channels, classes and size it recorded."""
    meta = read_metadata(path) if path.is_file() else {}  # a missing file: load_weights says which stage
    model = Classifier(meta.get("channels", 1), meta.get("classes"), meta.get("size", 28), meta.get("task", "labels"))
    load_weights(model, path, "classifier")
    return model.eval()


def rotated(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image at 0, 90, 180 and 270 degrees (4N x C x S x S), labelled by its rotation (4N)."""
    turns = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(len(ROTATIONS))])
    return turns, torch.arange(len(ROTATIONS)).repeat_interleave(len(images))


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Class probabilities, N x classes."""
    return torch.cat([model(chunk).softmax(1) for chunk in images.split(batch)])


@torch.no_grad()
def embed(model: Classifier, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x 128, class probabilities N x classes) in one pass."""
    features = torch.cat([model.features(chunk) for chunk in images.split(batch)])
    return features, model.logits_head(features).softmax(1)
