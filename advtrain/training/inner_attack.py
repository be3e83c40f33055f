"""The inner loop of adversarial training: the attack, the perturbation clip and the mixed loss."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import ATTACKS, Attack, build_attack
from ..ops.norms import project_l2
from ..registry import valid_options
from .fast_at import INNER_ATTACKS

#: iterations of iterative inner-loop attacks when unspecified (thesis 5.5: DDN/BP at 20 iterations)
DEFAULT_STEPS = 20


def build_inner_attack(name: str, options: dict[str, Any] | None = None, eval_mode: bool = True) -> Attack:
    """An attack from the registry, ``DEFAULT_STEPS`` iterations unless ``options`` says otherwise.

    ``name`` is an attack of the registry or of :data:`INNER_ATTACKS` (training-only: ``nfgsm``).
    Unknown names and options fail with the valid ones; bad values (e.g. ``eps <= 0``) fail in the
    attack's constructor.
    """
    opts = dict(options or {})
    if name in INNER_ATTACKS:  # training-only attacks (N-FGSM)
        return INNER_ATTACKS.build(name, eval_mode=eval_mode, **opts)
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted([*ATTACKS.keys(), *INNER_ATTACKS.keys()]))}")
    if "steps" in valid_options(ATTACKS[name]):
        opts.setdefault("steps", DEFAULT_STEPS)
    return build_attack(name, eval_mode=eval_mode, **opts)


def check_mix(adv_weight: float, clean_weight: float | None) -> None:
    """The mix ratio must lie in [0, 1]; an explicit clean-loss weight must be >= 0."""
    if not 0.0 <= adv_weight <= 1.0:
        raise ValueError(f"adv_weight (mix ratio) must lie in [0, 1] (0.5: Goodfellow's mixed loss, "
                         f"1.0: Madry's adversarial-only loss), got {adv_weight}")
    if clean_weight is not None and not clean_weight >= 0.0:
        raise ValueError(f"clean_weight must be >= 0 (or null for 1 - adv_weight), got {clean_weight}")


def clip_perturbation(x_adv: Tensor, x: Tensor, max_norm: float | None) -> Tensor:
    """Clip ``||x_adv - x||_2`` to ``max_norm`` (projection on B_2[x; max_norm], thesis eq. 2.16)."""
    return x_adv if max_norm is None else project_l2(x_adv, x, max_norm)


def adversarial_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, adv_weight: float,
                     clean_weight: float | None = None) -> tuple[Tensor, Tensor]:
    """``w_c CE(f(x), y) + w_a CE(f(x_adv), y)`` with ``w_a = adv_weight``, ``w_c = clean_weight``
    (default ``1 - adv_weight``): Goodfellow et al. 2014's mixed objective for w_a = 0.5, Madry et al.
    2017's adversarial-only objective for w_a = 1. One forward on the concatenated batch when both
    terms count (BatchNorm then sees clean and adversarial images together).

    Returns the loss and the logits of the clean images (of the adversarial ones when w_c = 0).
    """
    w_c = 1.0 - adv_weight if clean_weight is None else clean_weight
    if w_c == 0.0:
        logits = model(x_adv)
        return adv_weight * F.cross_entropy(logits, y), logits
    if adv_weight == 0.0:
        logits = model(x)
        return w_c * F.cross_entropy(logits, y), logits
    lc, la = model(torch.cat([x, x_adv])).split(x.shape[0])
    return w_c * F.cross_entropy(lc, y) + adv_weight * F.cross_entropy(la, y), lc
