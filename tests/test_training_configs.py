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
            "cifar10_resnet18_pgd", "cifar10_resnet18_bp", "imagenet_resnet50_bp", *NEW_RECIPES,
            "cifar10_resnet18_trades", "cifar10_resnet18_awp"} <= names
    imagenet = yaml.safe_load((CONFIGS[0].parent / "imagenet_resnet50_bp.yaml").read_text())
    assert imagenet["trainer"]["strategy"] == "ddp" and imagenet["trainer"]["precision"] == "bf16-mixed"
    assert imagenet["model"]["attack"] == "bp" and imagenet["model"]["model"] == "timm:resnet50"


NEW_RECIPES = ["mnist_embedded_trades", "mnist_embedded_mart", "mnist_embedded_awp", "mnist_embedded_fgsm_rs",
               "mnist_embedded_nfgsm", "mnist_embedded_gradalign"]


@pytest.mark.parametrize("name", NEW_RECIPES)
def test_new_recipe_runs_two_steps_with_its_callbacks(name, tmp_path):
    """The recipe's model and callbacks (EMA, guard, checkpoint) as the config builds them, 2 training steps
    (inner attacks at 2 steps, no validation attacks: the point is the wiring); the checkpoint holds the
    averaged weights as state_dict and the trained ones as current_model_state, and they differ."""
    cfg = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
    model_cfg = {**cfg["model"], "val_attack": None, "val_pgd": None}
    if "steps" in model_cfg.get("attack_options", {}) and model_cfg["attack_options"]["steps"] > 2:
        model_cfg["attack_options"] = {**model_cfg["attack_options"], "steps": 2}
    callbacks = []
    for c in cfg["trainer"]["callbacks"]:
        init = dict(c.get("init_args", {}))
        if c["class_path"].endswith("ResumableCheckpoint"):
            init.update(dirpath=str(tmp_path), every_n_train_steps=1)
        callbacks.append(instantiate_class((), {"class_path": c["class_path"], "init_args": init}))
    pl.seed_everything(0, verbose=False)
    module = AdversarialTrainingModule(**model_cfg)
    trainer = pl.Trainer(max_steps=2, limit_train_batches=2, limit_val_batches=1, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                         default_root_dir=tmp_path)
    trainer.fit(module, NamedDataModule(**{**cfg["data"], "batch_size": 16}))
    assert trainer.global_step == 2 and 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    averaged, trained = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == trained.keys()
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)
