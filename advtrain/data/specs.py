"""What the evaluation protocol keys by dataset name, in one table: the thesis' settings group and D_upp.

Thesis 5.3 / Table 5.2: attacks run with per-group settings (MNIST, CIFAR10, ImageNet) and P_upp is
the success rate within D_upp = 2 (MNIST), 0.7 (CIFAR-10), 1 (ImageNet) in L2.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's protocol constants.

    Args:
        name: the dataset name (``build_datamodule``'s, or a sample set such as ``foolbox_imagenet``).
        group: the thesis' settings group of its attack budgets and hyper-parameters.
        d_upp: P_upp's L2 budget (thesis Table 5.2).
    """

    name: str
    group: str
    d_upp: float


DATASET_SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("mnist_embedded", "mnist", 2.0),
    DatasetSpec("mnist", "mnist", 2.0),
    DatasetSpec("cifar10", "cifar10", 0.7),
    DatasetSpec("imagefolder", "imagenet", 1.0),
    DatasetSpec("foolbox_imagenet", "imagenet", 1.0),  # foolbox's 20 ImageNet samples (transfer CLI)
)}

#: D_upp per dataset name, read from :data:`DATASET_SPECS`
D_UPP: dict[str, float] = {name: s.d_upp for name, s in DATASET_SPECS.items()}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; a ValueError naming the known ones otherwise."""
    if name not in DATASET_SPECS:
        raise ValueError(f"no protocol settings for dataset {name!r}; known: {', '.join(DATASET_SPECS)}")
    return DATASET_SPECS[name]
