"""TRADES' inner maximization (Zhang et al. 2019, eq. 5 and Alg. 1): PGD on KL(f(x) || f(x')).

The same projected steps as :class:`~advtrain.attacks.gradient.PGDLinf` / ``IFGSM`` / ``PGDL2``, with
two differences from PGD-CE: the attacker's loss is ``-KL(p(x) || p(x'))`` (p(x) from the clean images,
computed once with the attack's model mode, eval by default, as in the paper's code), and the start is
``x + 0.001 N(0, 1)`` (clipped to the pixel box), always: at x' = x the KL and its gradient are zero.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..attacks import Attack, AttackContext
from ..attacks.gradient import IFGSM, PGDL2, PGDLinf
from ..attacks.losses import kl_divergence
from ..ops.norms import clip_box

#: standard deviation of TRADES' random start (the paper's code: ``0.001 * torch.randn``)
START_STD = 1e-3


class _KLInner:
    """Mixin over an iterative gradient attack: KL objective and TRADES' small Gaussian start."""

    def _random_init(self, x: Tensor) -> Tensor:
        return clip_box(x + START_STD * torch.randn_like(x))

    def _run(self, ctx: AttackContext) -> Tensor:
        reference = ctx.logits(ctx.x)  # p(x), fixed during the maximization
        ctx.loss_fn = lambda logits, y, targets: -kl_divergence(reference, logits)
        return super()._run(ctx)  # type: ignore[misc]


class KLPGDLinf(_KLInner, PGDLinf):
    name = "trades_pgd_linf"


class KLIFGSM(_KLInner, IFGSM):
    name = "trades_ifgsm"


class KLPGDL2(_KLInner, PGDL2):
    name = "trades_pgd_l2"


#: attack class -> its TRADES variant (most derived first: PGDLinf is an IFGSM)
_VARIANTS: list[tuple[type, type]] = [(PGDLinf, KLPGDLinf), (IFGSM, KLIFGSM), (PGDL2, KLPGDL2)]


def kl_variant(attack: Attack) -> Attack:
    """The same attack (every option kept) maximizing TRADES' KL instead of its own loss."""
    variant = next((v for base, v in _VARIANTS if type(attack) is base), None)
    if variant is None:
        raise ValueError(f"loss 'trades' maximizes its KL term with PGD: model.attack must be pgd_linf, ifgsm or "
                         f"pgd_l2, got {attack.name}")
    if attack.early_stop:
        raise ValueError("loss 'trades': the KL maximization runs every step on every image (early_stop false)")
    if attack.loss != attack.default_loss:
        raise ValueError(f"loss 'trades' replaces the attack's loss by its KL term: drop attack option "
                         f"loss={attack.loss!r}")
    out = variant.__new__(variant)
    out.__dict__.update(vars(attack))
    out.random_start = True
    out.loss = "trades_kl"
    return out
