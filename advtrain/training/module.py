"""The LightningModule for clean and adversarial training (thesis 3.2.2, 5.5)."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..attacks import build_attack
from ..attacks.norms import l2_norm, view_as_batch
from ..models import build_model


class AdversarialTrainingModule(pl.LightningModule):
    """Wraps a classifier from the model factory and an inner-loop attack from the registry.

    Per batch: craft adversarial examples (model in eval mode unless ``attack_train_mode``), then
    minimise ``(1 - adv_weight) * CE(clean) + adv_weight * CE(adv)``. ``adv_weight=0.5`` is
    Goodfellow's mixed loss, ``1.0`` Madry's adversarial-only. The first ``clean_epochs`` epochs
    train on clean images only (clean pre-training, then adversarial fine-tuning as in thesis 5.5).

    Args:
        model: model factory name (``c4``, ``cifar_cnn``, ``timm:<name>``, ``torchvision:<name>``).
        attack: registry name of the inner-loop attack, or None for clean training.
        attack_options: keyword options of the attack (e.g. ``{steps: 20}``).
        max_norm: for success-targeted attacks, clip each perturbation's L2 norm to this value.
    """

    def __init__(self, model: str = "c4", num_classes: int = 10, pretrained: bool = False,
                 weights: str | None = None, attack: str | None = None,
                 attack_options: dict[str, Any] | None = None, adv_weight: float = 0.5,
                 clean_epochs: int = 0, max_norm: float | None = None, attack_train_mode: bool = False,
                 optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, scheduler: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= adv_weight <= 1.0:
            raise ValueError(f"adv_weight (mix ratio) must lie in [0, 1], got {adv_weight}")
        if clean_epochs < 0:
            raise ValueError(f"clean_epochs must be >= 0, got {clean_epochs}")
        if max_norm is not None and max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if scheduler not in (None, "cosine", "none"):
            raise ValueError(f"scheduler must be None or 'cosine', got {scheduler!r}")
        self.save_hyperparameters()
        self.model = build_model(model, num_classes=num_classes, pretrained=pretrained, weights=weights)
        self.attack = build_attack(attack, eval_mode=not attack_train_mode, **(attack_options or {})) \
            if attack else None
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.adv_l2 = MeanMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @property
    def adversarial_now(self) -> bool:
        return self.attack is not None and self.current_epoch >= self.hparams.clean_epochs

    def craft(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial examples for training (no parameter gradients; modes restored)."""
        x_adv = self.attack(self.model, x, y).x_adv
        if self.hparams.max_norm is not None:
            delta = x_adv - x
            scale = (self.hparams.max_norm / l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
            x_adv = (x + delta * view_as_batch(scale, delta)).clamp(0, 1)
        return x_adv.detach()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        w = self.hparams.adv_weight if self.adversarial_now else 0.0
        if w > 0:
            x_adv = self.craft(x, y)
            self.adv_l2.update(l2_norm(x_adv - x))
            inputs = torch.cat([x, x_adv]) if w < 1 else x_adv
            logits = self.model(inputs)
            if w < 1:
                lc, la = logits.split(x.shape[0])
                loss = (1 - w) * F.cross_entropy(lc, y) + w * F.cross_entropy(la, y)
                logits = lc
            else:
                loss = F.cross_entropy(logits, y)
            self.log("train/adv_l2", self.adv_l2, on_step=False, on_epoch=True)
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self.model(x), y)
        self.log("val/acc", self.val_acc, prog_bar=True, sync_dist=False)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc(self.model(x), y)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self):
        h = self.hparams
        if h.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        if h.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs or 1))
            return {"optimizer": opt, "lr_scheduler": sched}
        return opt
