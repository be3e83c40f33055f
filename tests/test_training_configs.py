"""Every training recipe in configs/ parses and builds its module; Trainer options exist."""
from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

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
    if "optimizer" in cfg:  # LightningCLI's options (train.py): they build
        opt = instantiate_class(module.parameters(), cfg["optimizer"])
        assert isinstance(opt, torch.optim.Optimizer)
        # every recipe that picks an optimizer also picks its schedule (null: constant), or it would inherit
        # default.yaml's (lr x0.1 after epoch 7) without saying so
        assert "lr_scheduler" in cfg, f"{path.name} sets optimizer but not lr_scheduler"
        if cfg["lr_scheduler"] is not None:
            instantiate_class(opt, cfg["lr_scheduler"])
        if "SGD" in cfg["optimizer"]["class_path"]:  # thesis 3.2.2
            assert opt.defaults["momentum"] == 0.9
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
