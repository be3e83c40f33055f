"""Small, fast training runs shared by the tests of advtrain.training."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from advtrain.data import NamedDataModule
from advtrain.training import AdversarialTrainingModule
from advtrain.training.checkpoint import ResumableCheckpoint

#: a quick adversarial recipe: PGD2 with a random start (so resume must restore the RNG), cosine lr
QUICK = dict(attack="pgd_l2", attack_options={"eps": 1.0, "steps": 2, "random_start": True},
             clean_epochs=1, val_attack="ddn", val_attack_options={"steps": 5},
             val_subset=32, val_pgd="pgd_l2", val_pgd_options={"steps": 2})


class CosineModule(AdversarialTrainingModule):
    """What train.py's ``optimizer: Adam`` + ``lr_scheduler: CosineAnnealingLR`` options build (a scheduler
    state that exact resume must restore too); a class, not a lambda, so ddp_spawn can pickle it."""

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)]


def quick_fit(root: Path, module_kw: dict[str, Any] | None = None, callbacks: Sequence[Callback] = (),
              ckpt_path: str | None = None, max_epochs: int = 3, batches: int = 8,
              val_batches: int | float = 1, **trainer_kw: Any):
    """Fit C4 on ``batches`` batches per epoch of the embedded MNIST; returns (module, trainer)."""
    pl.seed_everything(0, verbose=False)
    module = CosineModule(**{**QUICK, **(module_kw or {})})
    dm = NamedDataModule("mnist_embedded", batch_size=32, eval_batch_size=64)
    ckpt = ResumableCheckpoint(dirpath=root, every_n_train_steps=3)
    trainer_kw.setdefault("logger", False)
    trainer = pl.Trainer(max_epochs=max_epochs, limit_train_batches=batches, limit_val_batches=val_batches,
                         deterministic=True, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[*callbacks, ckpt], default_root_dir=root, **trainer_kw)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module, trainer


class Kill(Callback):
    """Raises at the end of training batch number ``at`` (global step), before it is checkpointed."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def lightning_ckpt(state: dict, path: Path, **hp: Any) -> Path:
    """A C4 state dict saved as train.py writes it (Lightning layout: ``model.*`` weights,
    hyper_parameters, the datamodule's) -- what evaluate.py and ``advtrain.featspace stats`` load."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"model": "c4", "num_classes": 10, **hp},
                "datamodule_hyper_parameters": {"dataset": "mnist_embedded", "root": None},
                "pytorch-lightning_version": "2.5.0", "epoch": 5}, path)
    return path
