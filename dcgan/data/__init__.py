"""The data stages: fetch a data set's files, prepare them as tensors, load them for training.

prepare.py    fetch, prepare, load_prepared: the stages, for any data set
datasets.py   the data sets `data.dataset` names
idx.py        MNIST, Fashion-MNIST, Kuzushiji-MNIST (IDX files)
cifar.py      CIFAR-10 (its binary distribution)
folder.py     a folder of the user's own images
published.py  files checked against their publishers' checksums
"""

from dcgan.data.prepare import epoch_order, fetch, load_prepared, prepare, prepared_info

__all__ = ["epoch_order", "fetch", "load_prepared", "prepare", "prepared_info"]
