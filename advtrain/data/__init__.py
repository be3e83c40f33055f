"""Datasets as LightningDataModules yielding images in [0, 1]; built by name."""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .datamodules import (CIFAR10DataModule, EmbeddedMNISTDataModule, ImageFolderDataModule,
                          MissingDatasetError, MNISTDataModule)

DATASETS: Registry = Registry("dataset")
DATASETS.register("mnist_embedded")(EmbeddedMNISTDataModule)
DATASETS.register("mnist")(MNISTDataModule)
DATASETS.register("cifar10")(CIFAR10DataModule)
DATASETS.register("imagefolder")(ImageFolderDataModule)

#: D_upp per dataset (thesis 5.3, Table 5.2)
D_UPP = {"mnist_embedded": 2.0, "mnist": 2.0, "cifar10": 0.7, "imagefolder": 1.0}


def build_datamodule(name: str = "mnist_embedded", **kwargs: Any):
    """Build a datamodule by name: mnist_embedded, mnist, cifar10, imagefolder."""
    return DATASETS.build(name, **kwargs)


__all__ = ["build_datamodule", "DATASETS", "D_UPP", "MissingDatasetError", "EmbeddedMNISTDataModule",
           "MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule"]

from .named import NamedDataModule  # noqa: E402

__all__ += ["NamedDataModule"]
