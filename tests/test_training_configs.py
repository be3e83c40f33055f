"""Every training recipe in configs/ parses and builds its module; Trainer options exist."""
from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from advtrain.data import NamedDataModule
from advtrain.training import AdversarialTrainingModule

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                 if "model" in yaml.safe_load(p.read_text()) and "trainer" in yaml.safe_load(p.read_text()))
TRAINER_ARGS = set(inspect.signature(pl.Trainer.__init__).parameters)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_builds(path):
    cfg = yaml.safe_load(path.read_text())
    assert set(cfg["trainer"]) <= TRAINER_ARGS, set(cfg["trainer"]) - TRAINER_ARGS
    model_cfg = {**cfg["model"], "pretrained": False}  # no weights download in tests
    module = AdversarialTrainingModule(**model_cfg)
    NamedDataModule(**cfg["data"])
    if model_cfg.get("attack"):
        assert module.attack is not None and module.hparams.adv_weight in (0.5, 1.0)
    if model_cfg.get("attack") in ("ddn", "bp"):  # thesis 5.5: clean pre-training, 20-iteration attacks
        assert module.attack.steps == 20
        assert model_cfg.get("clean_epochs", 0) > 0 or cfg["model"].get("pretrained")


def test_recipes_cover_the_thesis():
    names = {p.stem for p in CONFIGS}
    assert {"default", "mnist_embedded_fgsm", "mnist_embedded_pgd", "mnist_embedded_ddn", "mnist_fgsm", "mnist_pgd",
            "mnist_ddn", "mnist_bp", "cifar10_cnn_fgsm", "cifar10_cnn_pgd", "cifar10_cnn_ddn", "cifar10_cnn_bp",
            "cifar10_resnet18_pgd", "cifar10_resnet18_bp", "imagenet_resnet50_bp"} <= names
    imagenet = yaml.safe_load((CONFIGS[0].parent / "imagenet_resnet50_bp.yaml").read_text())
    assert imagenet["trainer"]["strategy"] == "ddp" and imagenet["trainer"]["precision"] == "bf16-mixed"
    assert imagenet["model"]["attack"] == "bp" and imagenet["model"]["model"] == "timm:resnet50"
