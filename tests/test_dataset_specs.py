"""One table of dataset-keyed protocol constants (advtrain/data/specs.py) read by data and evaluation."""
from __future__ import annotations

import pytest

from advtrain.data import D_UPP, DATASETS, dataset_spec
from advtrain.evaluation.suite import load_suite


def test_every_registered_dataset_has_protocol_settings():
    """A dataset one can train on but not evaluate (no group, no D_upp) would fail only at evaluation."""
    for name in DATASETS.canonical():
        assert dataset_spec(name).d_upp == D_UPP[name] > 0


def test_thesis_table_5_2():
    assert [D_UPP[n] for n in ("mnist_embedded", "mnist", "cifar10", "imagefolder")] == [2.0, 2.0, 0.7, 1.0]
    assert load_suite("reliable", "foolbox_imagenet") == load_suite("reliable", "imagefolder")


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match="no protocol settings for dataset 'svhn'; known: mnist_embedded"):
        load_suite("reliable", "svhn")


def test_training_recipes_use_their_datasets_d_upp():
    """The recipes' validation D_upp (P_upp, PGD2 budget) is the table's, not a copy that drifts."""
    import inspect
    from pathlib import Path

    import yaml

    from advtrain.training import AdversarialTrainingModule

    default = inspect.signature(AdversarialTrainingModule).parameters["d_upp"].default
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if "model" in cfg and "data" in cfg:
            dataset = cfg["data"].get("dataset", "mnist_embedded")
            assert cfg["model"].get("d_upp", default) == D_UPP[dataset], path.name
