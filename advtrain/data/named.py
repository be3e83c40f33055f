"""One datamodule for configs and the CLI: picks the dataset by name and forwards its options."""
from __future__ import annotations

import inspect

import lightning.pytorch as pl

from ..registry import valid_options
from .registry import DATASETS


class NamedDataModule(pl.LightningDataModule):
    """``NamedDataModule(dataset="cifar10", root="data", ...)`` delegates to the registered module.

    Options the chosen dataset does not take must stay at their defaults (else a clear error).
    """

    def __init__(self, dataset: str = "mnist_embedded", root: str | None = None, batch_size: int = 128,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 download: bool = False, augment: bool = False, image_size: int | None = None) -> None:
        super().__init__()
        cls = DATASETS[dataset]
        given = {"root": root, "batch_size": batch_size, "eval_batch_size": eval_batch_size,
                 "num_workers": num_workers, "seed": seed, "download": download, "augment": augment,
                 "image_size": image_size}
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        accepted = set(valid_options(cls))
        bad = [k for k, v in given.items() if k not in accepted and v != defaults[k]]
        if bad:
            raise ValueError(f"dataset {dataset!r} takes no option {', '.join(bad)}; "
                             f"it takes: {', '.join(sorted(accepted))}")
        self.dataset = dataset
        self.inner = cls(**{k: v for k, v in given.items() if k in accepted and v is not None})
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.inner.image_shape

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.inner.setup(stage)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def val_dataloader(self):
        return self.inner.val_dataloader()

    def test_dataloader(self):
        return self.inner.test_dataloader()
