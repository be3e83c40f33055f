"""Datasets as LightningDataModules yielding images in [0, 1]; built by name."""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .datamodules import (CIFAR10DataModule, EmbeddedMNISTDataModule, ImageFolderDataModule,
                          MissingDatasetError, MNISTDataModule)
from .specs import D_UPP, DATASET_SPECS, DatasetSpec, dataset_spec

DATASETS: Registry = Registry("dataset")
DATASETS.register("mnist_embedded")(EmbeddedMNISTDataModule)
DATASETS.register("mnist")(MNISTDataModule)
DATASETS.register("cifar10")(CIFAR10DataModule)
DATASETS.register("imagefolder")(ImageFolderDataModule)


def build_datamodule(name: str = "mnist_embedded", **kwargs: Any):
    """Build a datamodule by name: mnist_embedded, mnist, cifar10, imagefolder."""
    return DATASETS.build(name, **kwargs)


__all__ = ["build_datamodule", "DATASETS", "D_UPP", "DATASET_SPECS", "DatasetSpec", "dataset_spec",
           "MissingDatasetError", "EmbeddedMNISTDataModule", "MNISTDataModule", "CIFAR10DataModule",
           "ImageFolderDataModule"]

from .named import NamedDataModule  # noqa: E402

__all__ += ["NamedDataModule"]
