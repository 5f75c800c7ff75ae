"""The data sets `data.dataset` selects, by name."""

from __future__ import annotations

from typing import get_args

from dcgan.config import DatasetName
from dcgan.data.cifar import CIFAR10
from dcgan.data.folder import FOLDER
from dcgan.data.idx import FASHION_MNIST, KMNIST, MNIST
from dcgan.data.source import Source

DATASETS: dict[str, Source] = {source.name: source for source in (MNIST, FASHION_MNIST, KMNIST, CIFAR10, FOLDER)}
assert set(DATASETS) == set(get_args(DatasetName)), "config.DatasetName and DATASETS disagree"
