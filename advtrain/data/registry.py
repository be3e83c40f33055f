"""The datasets by name (``DATASETS``) and ``build_datamodule``."""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .datamodules import CIFAR10DataModule, EmbeddedMNISTDataModule, ImageFolderDataModule, MNISTDataModule

DATASETS: Registry = Registry("dataset")
DATASETS.register("mnist_embedded")(EmbeddedMNISTDataModule)
DATASETS.register("mnist")(MNISTDataModule)
DATASETS.register("cifar10")(CIFAR10DataModule)
DATASETS.register("imagefolder")(ImageFolderDataModule)


def build_datamodule(name: str = "mnist_embedded", **kwargs: Any):
    """Build a datamodule by name: mnist_embedded, mnist, cifar10, imagefolder."""
    return DATASETS.build(name, **kwargs)
