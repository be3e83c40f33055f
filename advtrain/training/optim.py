"""Optimizer and learning-rate schedule of a training recipe."""
from __future__ import annotations

from typing import Iterable

import torch

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = (None, "none", "cosine", "multistep")


def check_optimizer_options(optimizer: str, lr: float, scheduler: str | None,
                            milestones: list[int] | None) -> None:
    """Clear errors for a bad optimizer recipe (raised when the module is built, not at fit time)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if scheduler == "multistep" and not milestones:
        raise ValueError("scheduler 'multistep' needs milestones (epochs where lr is multiplied by 0.1)")


def build_optimizer(params: Iterable[torch.nn.Parameter], optimizer: str = "adam", lr: float = 1e-3,
                    momentum: float = 0.9, weight_decay: float = 0.0, scheduler: str | None = None,
                    milestones: list[int] | None = None, max_epochs: int | None = None):
    """Adam or SGD with momentum (thesis 3.2.2: momentum 0.9, lr 1e-3), optionally with a cosine
    (per epoch, over ``max_epochs``) or multistep (x0.1 at ``milestones``) schedule.

    Returns what ``LightningModule.configure_optimizers`` returns.
    """
    check_optimizer_options(optimizer, lr, scheduler, milestones)
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs or 1))
    elif scheduler == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    else:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
