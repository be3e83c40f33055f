"""Fitting the feature-space files on a dataset's training split: shared by the command line
(``python -m advtrain.featspace``) and fit-on-first-use (``provision.py``)."""
from __future__ import annotations

import time
from pathlib import Path

from ..data import build_datamodule
from .encoder import fit_encoder


def train_split(dataset: str, batch_size: int = 256):
    """The set-up datamodule of ``dataset`` (seed 0) whose training split the files are fitted on."""
    dm = build_datamodule(dataset, batch_size=batch_size, seed=0)
    dm.setup()
    return dm


def train_encoder(out: str | Path, dataset: str = "mnist_embedded", epochs: int = 3, seed: int = 0) -> Path:
    dm = train_split(dataset, batch_size=64)
    start = time.perf_counter()
    path = fit_encoder(dm.train_dataloader(), epochs=epochs, seed=seed).save(out)
    print(f"encoder: {path} ({epochs} epochs, fitted in {time.perf_counter() - start:.0f} s)")
    return path
