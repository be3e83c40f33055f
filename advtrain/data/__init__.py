"""Datasets as LightningDataModules yielding images in [0, 1]; built by name."""
from __future__ import annotations

from .datamodules import (CIFAR10DataModule, EmbeddedMNISTDataModule, ImageFolderDataModule,
                          MissingDatasetError, MNISTDataModule)
from .named import NamedDataModule
from .registry import DATASETS, build_datamodule
from .specs import D_UPP, DATASET_SPECS, DatasetSpec, dataset_spec

__all__ = ["build_datamodule", "DATASETS", "D_UPP", "DATASET_SPECS", "DatasetSpec", "dataset_spec",
           "MissingDatasetError", "EmbeddedMNISTDataModule", "MNISTDataModule", "CIFAR10DataModule",
           "ImageFolderDataModule", "NamedDataModule"]
