"""Attacker losses shared by every attack: thesis eq. 2.7-2.8 and the margin loss eq. 2.19.

Convention: the attacker *minimizes* these losses; a value < 0 means adversarial (targeted DLR:
the target beats the true class).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _other_max(logits: Tensor, cls: Tensor) -> Tensor:
    """max_{k != cls} logits[k] per sample."""
    masked = logits.scatter(1, cls[:, None], float("-inf"))
    return masked.amax(dim=1)


def ce_difference(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    """Thesis eq. 2.8 (untargeted) / eq. 2.7 (targeted): log p(l_g) - max_{l != l_g} log p(l).

    The log-softmax normalisers cancel, so this equals the logit gap (thesis eq. 2.19 with mu = 0,
    without the positive part). Targeted: log p(l_g)... replaced by max_{l != t} log p(l) - log p(t).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    if targets is None:
        return logp.gather(1, y[:, None]).squeeze(1) - _other_max(logp, y)
    return _other_max(logp, targets) - logp.gather(1, targets[:, None]).squeeze(1)


def margin_loss(logits: Tensor, y: Tensor, targets: Tensor | None = None, margin: float = 0.0) -> Tensor:
    """C&W margin loss J_mu (thesis eq. 2.19): [u(l_g) - max_{k != l_g} u(k) + mu]_+ ."""
    logits = logits.float()
    if targets is None:
        gap = logits.gather(1, y[:, None]).squeeze(1) - _other_max(logits, y)
    else:
        gap = _other_max(logits, targets) - logits.gather(1, targets[:, None]).squeeze(1)
    return (gap + margin).clamp_min(0.0)


def cross_entropy(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    """Negative cross-entropy of the true class (untargeted) or cross-entropy of the target.

    Minimising it pushes p(l_g) down (untargeted) or p(t) up (targeted), as DDN does.
    """
    logits = logits.float()
    if targets is None:
        return -F.cross_entropy(logits, y, reduction="none")
    return F.cross_entropy(logits, targets, reduction="none")


def dlr_loss(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 5 and its targeted form), to minimize.

    With z sorted decreasingly (z_pi1 >= z_pi2 >= ...):
      untargeted: (z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), < 0 iff misclassified;
      targeted:   (z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), < 0 iff the target beats y
                  (as in the paper: not yet "predicted as t", which the attack checks itself).
    Invariant to shifting and scaling the logits. Needs 3 classes (4 targeted).
    """
    logits = logits.float()
    need = 3 if targets is None else 4
    if logits.shape[1] < need:
        raise ValueError(f"loss 'dlr' needs at least {need} classes, the model has {logits.shape[1]}")
    top = logits.topk(need, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if targets is None:
        return (z_y - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return (z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": cross_entropy,
    "dlr": dlr_loss,
    "ce_difference": ce_difference,
    "margin": margin_loss,
}


def get_loss(name: str) -> Callable[..., Tensor]:
    """Look up an attacker loss by name."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown attack loss {name!r}; known: {sorted(LOSSES)}") from None


def is_adversarial(logits: Tensor, y: Tensor, targets: Tensor | None = None) -> Tensor:
    """Success criterion: prediction differs from y (untargeted) or equals the target, on a row
    of finite logits only: NaN or inf logits are never a success (``argmax`` would pick the
    first NaN's class, a "misclassification" of a model that said nothing)."""
    pred = logits.argmax(dim=1)
    hit = pred != y if targets is None else pred == targets
    return hit & torch.isfinite(logits).all(dim=1)


def kl_divergence(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_ref || p) = sum_k p_ref,k (log p_ref,k - log p_k) per sample, p = softmax of the logits.

    TRADES' robust term and the inner maximization of it (Zhang et al. 2019, eq. 5), MART's KL term
    (Wang et al. 2020, eq. 9). Differentiable in both arguments (the papers do not detach p_ref).
    An attacker minimizing it wants ``-kl_divergence``.
    """
    ref = reference_logits.float()
    return (F.softmax(ref, dim=1) * (F.log_softmax(ref, dim=1) - F.log_softmax(logits.float(), dim=1))).sum(dim=1)
