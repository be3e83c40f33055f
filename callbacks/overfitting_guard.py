"""Catastrophic-overfitting guard for single-step adversarial training (Wong et al. 2020, sec. 5.2).

Every ``every_n_steps`` training steps, the accuracy under PGD and under FGSM is measured on a fixed small
batch (the first ``n`` validation images, a fixed seed, the training RNG untouched). Catastrophic
overfitting (CO) shows as PGD accuracy collapsing within a few hundred steps while FGSM accuracy stays
high (the model's loss surface bends so that a single linear step no longer finds the adversarial
examples). On CO the guard warns, or (``action: restore``) loads the weights of the last good check and
stops training.
"""
from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import torch
from torch import Tensor

from advtrain.attacks import build_attack
from advtrain.distributed import broadcast


class CatastrophicOverfittingWarning(UserWarning):
    """PGD accuracy collapsed while FGSM accuracy stayed high."""


def collapsed(pgd_acc: float, fgsm_acc: float, best_pgd_acc: float, drop: float = 0.5, gap: float = 0.2) -> bool:
    """CO signature: PGD accuracy below ``drop`` x the best seen and at least ``gap`` below FGSM accuracy."""
    return pgd_acc < drop * best_pgd_acc and fgsm_acc - pgd_acc >= gap


class CatastrophicOverfittingGuard(pl.Callback):
    """Args: eps (Linf budget of both attacks), every_n_steps, n (images), pgd_steps, drop and gap (see
    :func:`collapsed`), action ``warn`` or ``restore`` (last good weights, then stop), seed."""

    def __init__(self, eps: float = 0.3, every_n_steps: int = 50, n: int = 256, pgd_steps: int = 10,
                 drop: float = 0.5, gap: float = 0.2, action: str = "restore", seed: int = 0) -> None:
        if action not in ("warn", "restore"):
            raise ValueError(f"action must be 'warn' or 'restore', got {action!r}")
        for name, v in (("every_n_steps", every_n_steps), ("n", n), ("pgd_steps", pgd_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0.0 < drop < 1.0 or not 0.0 <= gap < 1.0:
            raise ValueError(f"drop must lie in (0, 1) and gap in [0, 1), got {drop}, {gap}")
        self.every_n_steps, self.n, self.drop, self.gap = every_n_steps, n, drop, gap
        self.action, self.seed = action, seed
        self.pgd = build_attack("pgd_linf", eps=eps, steps=pgd_steps, random_start=True)
        self.fgsm = build_attack("fgsm", eps=eps)
        self.best_pgd_acc = 0.0
        self.history: list[tuple[int, float, float]] = []  # (step, PGD accuracy, FGSM accuracy)
        self.fired_at: int | None = None
        self._batch: tuple[Tensor, Tensor] | None = None
        self._good: dict | None = None

    def _fixed_batch(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor]:
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else trainer.val_dataloaders
        xs, ys, have = [], [], 0
        for x, y in loader:
            xs.append(x), ys.append(y)
            have += len(y)
            if have >= self.n:
                break
        if not xs:
            raise ValueError("CatastrophicOverfittingGuard needs validation images (its fixed batch)")
        return torch.cat(xs)[: self.n], torch.cat(ys)[: self.n]

    def accuracies(self, model: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        """(PGD accuracy, FGSM accuracy) on (x, y) with a fixed seed; the caller's RNG is left as it was."""
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            pgd = 1.0 - self.pgd(model, x, y).success.float().mean().item()
            fgsm = 1.0 - self.fgsm(model, x, y).success.float().mean().item()
        return pgd, fgsm

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps != 0:
            return
        if self._batch is None:
            x, y = self._fixed_batch(trainer)
            self._batch = (x.to(pl_module.device), y.to(pl_module.device))
        pgd, fgsm = broadcast(self.accuracies(pl_module.model, *self._batch))  # one decision for every rank
        self.history.append((step, pgd, fgsm))
        pl_module.log_dict({"co/pgd_acc": pgd, "co/fgsm_acc": fgsm}, on_step=True, on_epoch=False)
        if not collapsed(pgd, fgsm, self.best_pgd_acc, self.drop, self.gap):
            self.best_pgd_acc = max(self.best_pgd_acc, pgd)
            self._good = copy.deepcopy(pl_module.model.state_dict())
            return
        self.fired_at = step
        msg = (f"catastrophic overfitting at step {step}: PGD accuracy {pgd:.3f} (best {self.best_pgd_acc:.3f}), "
               f"FGSM accuracy {fgsm:.3f} on {len(self._batch[1])} fixed images")
        if self.action == "restore" and self._good is not None:
            pl_module.model.load_state_dict(self._good)
            trainer.should_stop = True
            msg += "; weights of the last good check restored, training stopped"
        warnings.warn(msg, CatastrophicOverfittingWarning, stacklevel=2)

    def state_dict(self) -> dict:
        return {"best_pgd_acc": self.best_pgd_acc, "fired_at": self.fired_at}

    def load_state_dict(self, state: dict) -> None:
        self.best_pgd_acc = float(state.get("best_pgd_acc", 0.0))
        self.fired_at = state.get("fired_at")
