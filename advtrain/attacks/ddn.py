"""Decoupled Direction and Norm (DDN), Rony et al. 2019; thesis eq. 2.20."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Attack, AttackContext, BestTracker
from ..ops.checks import check_count, check_positive, check_range
from ..ops.norms import clip_box, l2_norm, normalize_l2, project_sphere, quantize as quantize_8bit
from .registry import register_attack


def cosine_step(i: int, steps: int, start: float = 1.0, end: float = 0.01) -> float:
    """Cosine annealing from ``start`` (i = 0) to ``end`` (i -> steps), as in Rony et al. 2019."""
    return end + (start - end) * (1.0 + math.cos(math.pi * i / steps)) / 2.0


@register_attack("ddn")
class DDN(Attack):
    """DDN: y_{i+1} = proj_{S[x; rho_i]}(y_i - alpha_i n(grad J(y_i))) (thesis eq. 2.20).

    The radius follows Rony et al. 2019 (Alg. 1): rho_0 = ``init_norm``, then
    rho_i = (1 - gamma) rho_{i-1} when y_i is adversarial, (1 + gamma) rho_{i-1} otherwise,
    capped at the largest distortion reachable in the box. The step alpha_i is cosine-annealed
    from ``alpha`` to ``alpha_min``. Each iterate is clipped to [0, 1] and, when ``quantize``,
    rounded to 8 bits. Loss: cross-entropy (as in the paper). Returns per sample the successful
    iterate of least L2 (the final iterate included), or x unchanged and marked failed.

    Checked against adv_lib's ``ddn`` (Rony): same radius update, cap, cosine index i, rounding.
    The thesis' wording of eq. 2.20 scales ||y_i - x|| rather than the running radius; its
    experiments use the authors' code (thesis 5.3.1), which we follow: on the trained C4 (246
    images, 20 steps, quantized) the literal reading reached success 0.72 against 0.96 here.

    Rounding every iterate (``quantize``) versus rounding once at the end (issue 11 asked whether the
    per-step rounding costs success on robust models): on the cheap Madry C4 of the tests
    (``madry_c4``, 200 correct test images, 100 steps) rounding every step gives P_suc 1.000, D-bar
    2.438, P(D <= 2) 0.350, rounding the unquantized attack's output afterwards 0.830 / 2.657 /
    0.235: the per-step rounding is the better quantized attack there, so it stays. Issue 11's
    0.93 (per step) vs 1.00 (never rounded) on a converged Madry LeNet compares against the
    real-valued images, which the 8-bit protocol does not score.

    Gradient-masked models (issue 21): on advertorch's Madry LeNet5 (``bench/bp_variants.py lenet5``,
    200 digits, quantized) DDN-20 succeeds on 0.080 (the logit-gap loss: also 0.080), DDN-300 on
    0.980 (D-bar 1.980): the cause is BP's (fixed-length normalized-gradient steps random-walk where
    successive gradients are nearly orthogonal), but the cure, a step onto the linearized boundary,
    is not DDN's algorithm, so DDN stays as published; use ``bp`` with ``variant="linear"`` (1.000 at
    20 iterations) or FAB on such models.

    Cost: ``steps`` forward+backward passes and one extra forward on the last iterate.
    """

    family = "success"
    rounds_iterates = True

    def __init__(self, steps: int = 100, init_norm: float = 1.0, gamma: float = 0.05,
                 alpha: float = 1.0, alpha_min: float = 0.01, **kw) -> None:
        super().__init__(**kw)
        check_count("steps", steps)
        check_positive("init_norm", init_norm)
        check_positive("alpha", alpha)
        check_positive("alpha_min", alpha_min, allow_zero=True)
        check_range("gamma", gamma, "(0, 1)")
        self.steps = int(steps)
        self.init_norm = float(init_norm)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.alpha_min = float(alpha_min)

    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        worst = l2_norm(torch.maximum(x, 1.0 - x))  # largest distortion inside the box
        rho = torch.full_like(worst, self.init_norm)
        best = BestTracker(x)
        y = x.clone()
        for i in range(self.steps):
            logits, _, g = ctx.loss_and_grad(y)
            adv = ctx.is_adv(logits)
            best.update(y, adv)
            step = y - cosine_step(i, self.steps, self.alpha, self.alpha_min) * normalize_l2(g)
            rho = torch.minimum(torch.where(adv, (1.0 - self.gamma) * rho, (1.0 + self.gamma) * rho), worst)
            y = clip_box(project_sphere(step, x, rho))
            if self.quantize:
                y = quantize_8bit(y)
        best.update(y, ctx.is_adv(ctx.logits(y)))
        return best.result()[0]
