"""Training objectives (``model.loss``): what the outer minimization of adversarial training minimizes.

``mix`` (default): Goodfellow's clean/adversarial mix / Madry's adversarial-only loss; ``trades``
(Zhang et al. 2019); ``mart`` (Wang et al. 2020); ``gradalign`` (Andriushchenko & Flammarion 2020).
Each takes (model, x, x_adv, y) and returns (mean loss, logits of the images train/acc is measured on),
and may replace the inner attack by the one its paper defines (:meth:`Objective.inner_attack`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import Attack
from ..attacks.losses import kl_divergence
from ..registry import Registry
from .fast_at import gradalign_penalty
from .inner_attack import adversarial_loss, check_mix
from .trades_attack import kl_variant

OBJECTIVES: Registry = Registry("training loss")


class Objective:
    """Base: the loss of one training batch given its adversarial examples."""

    name = "objective"

    def inner_attack(self, attack: Attack) -> Attack:
        """The attack that crafts x_adv for this objective (default: the configured one)."""
        return attack

    def __call__(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def _check_beta(beta: float, loss: str) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"loss {loss!r}: beta must be a number >= 0, got {beta!r}")
    return float(beta)


@OBJECTIVES.register("mix")
class Mix(Objective):
    """``(1 - w) CE(x) + w CE(x_adv)`` (see :func:`adversarial_loss`); w = 0.5 Goodfellow, 1.0 Madry."""

    name = "mix"

    def __init__(self, adv_weight: float = 0.5, clean_weight: float | None = None) -> None:
        check_mix(adv_weight, clean_weight)
        self.adv_weight, self.clean_weight = float(adv_weight), clean_weight

    def __call__(self, model, x, x_adv, y):
        return adversarial_loss(model, x, x_adv, y, self.adv_weight, self.clean_weight)


@OBJECTIVES.register("trades")
class Trades(Objective):
    """TRADES (Zhang et al. 2019, eq. 5): CE(f(x), y) + beta KL(p(x) || p(x_adv)), mean over the batch;
    x_adv maximizes the KL term (PGD from x + 0.001 N(0, 1), :mod:`.trades_attack`). Two forwards,
    clean then adversarial, as the paper's code (BatchNorm sees each batch on its own)."""

    name = "trades"

    def __init__(self, beta: float = 6.0) -> None:
        self.beta = _check_beta(beta, "trades")

    def inner_attack(self, attack: Attack) -> Attack:
        return kl_variant(attack)

    def __call__(self, model, x, x_adv, y):
        lc = model(x)
        la = model(x_adv)
        return F.cross_entropy(lc, y) + self.beta * kl_divergence(lc, la).mean(), lc


@OBJECTIVES.register("mart")
class MART(Objective):
    """MART (Wang et al. 2020, eq. 9): BCE(p(x_adv), y) + beta KL(p(x) || p(x_adv)) (1 - p_y(x)), mean over
    the batch, with BCE = CE(f(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)); x_adv from the configured
    attack (the paper: PGD on the cross-entropy)."""

    name = "mart"

    def __init__(self, beta: float = 6.0) -> None:
        self.beta = _check_beta(beta, "mart")

    def __call__(self, model, x, x_adv, y):
        lc = model(x)
        la = model(x_adv)
        p_adv = F.softmax(la.float(), dim=1)
        p_other = p_adv.scatter(1, y[:, None], 0.0).amax(dim=1)  # max_{k != y} p_k(x_adv)
        bce = F.cross_entropy(la, y, reduction="none") - torch.log((1.0 - p_other).clamp_min(1e-12))
        p_true = F.softmax(lc.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        return (bce + self.beta * kl_divergence(lc, la) * (1.0 - p_true)).mean(), lc


@OBJECTIVES.register("gradalign")
class GradAlign(Objective):
    """CE(f(x_adv), y) + lam (1 - cos(grad l(x), grad l(x + eta))) (Andriushchenko & Flammarion 2020, eq. 6),
    eta uniform in the attack's Linf ball; x_adv from the configured (FGSM) attack. ``lam`` 0.2 is the
    paper's value at eps = 8/255 on CIFAR-10; it grows with eps (their Table 4)."""

    name = "gradalign"

    def __init__(self, lam: float = 0.2) -> None:
        self.lam = _check_beta(lam, "gradalign")  # same rule: a number >= 0
        self.eps: float | None = None

    def inner_attack(self, attack: Attack) -> Attack:
        if getattr(attack, "norm", None) != "linf" or not hasattr(attack, "eps"):
            raise ValueError(f"loss 'gradalign' samples its noise in the attack's Linf ball: model.attack must be "
                             f"fgsm, pgd_linf, ifgsm or nfgsm, got {attack.name}")
        self.eps = float(attack.eps)
        return attack

    def __call__(self, model, x, x_adv, y):
        if self.eps is None:
            raise RuntimeError("GradAlign.inner_attack was not called: the noise budget is unknown")
        la = model(x_adv)
        return F.cross_entropy(la, y) + self.lam * gradalign_penalty(model, x, y, self.eps), la


def build_objective(name: str, options: dict[str, Any] | None, adv_weight: float = 0.5,
                    clean_weight: float | None = None) -> Objective:
    """``model.loss`` and ``model.loss_options``; ``mix`` takes the module's ``adv_weight``/``clean_weight``."""
    if name == "mix":
        if options:
            raise ValueError("loss 'mix' is set by model.adv_weight and model.clean_weight, not loss_options "
                             f"(got {sorted(options)})")
        return Mix(adv_weight, clean_weight)
    return OBJECTIVES.build(name, **(options or {}))
