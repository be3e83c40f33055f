"""Fast Minimum-Norm attack (FMN), Pintor et al. 2021, Alg. 1, in L2 and Linf."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackContext, BestTracker
from ..ops.checks import check_count, check_flag, check_positive, check_range
from .ddn import cosine_step
from ..ops.norms import DUAL_NORMS, NORMS, box_radius, normalize_l2, project_ball, quantize as quantize_8bit
from .registry import register_attack


class _FMN(Attack):
    """FMN: normalised gradient steps on the logit difference inside an Lp ball whose radius eps adapts.

    Per step k, with L(x + delta) the logit difference (``ce_difference``, < 0 when adversarial) and
    g its gradient (Pintor et al. 2021, Alg. 1):
      eps_k = min(eps_{k-1} (1 - gamma_k), ||delta*||)   if x + delta is adversarial (delta* the best),
              ||delta|| + |L| / ||g||_dual              while no adversarial was found yet
                                                        (the first-order distance to the boundary),
              eps_{k-1} (1 + gamma_k)                    otherwise;
      delta <- proj_{B[0; eps_k]}(delta - alpha_k g / ||g||_2), then clipped to the box.
    alpha_k and gamma_k are cosine-annealed from ``alpha_init``/``gamma_init`` to ``alpha_final``
    (default alpha_init / 100, the authors' default) and ``gamma_final``; eps is capped at the
    largest distortion the box allows. Returns the successful iterate of least distortion.

    ``quantize``: the iterate delta stays real-valued (small late steps still accumulate), but
    the model only ever sees its 8-bit rounding Q(x + delta): gradient, success, eps update and
    the kept best all use the rounded point, so the result is the best successful ROUNDED
    iterate at no extra forward pass. On the C4 (32 images, 100 steps) this equals rounding the
    iterate itself at every step as DDN does (L2 1.436 both, success 1.0), while rounding the
    unquantized result afterwards keeps only 0.47 of the successes (Linf: 0.63).

    ``min_growth`` (default True): until the first adversarial, eps also grows at least by
    (1 + gamma_k) per step. With the paper's rule alone (``min_growth=False``), eps = ||delta|| +
    |L| / ||g||_dual shrinks onto a boundary the linearisation keeps underestimating: on the C4,
    100 steps, success 0.02 (adv_lib's fmn: 0.05); with it 1.00 at L2 1.40 (DDN-100: 1.37).

    Default 100 steps: the paper's query-distortion curves flatten by ~100 steps, and on the C4
    (64 images) 300 steps give the same mean L2 (1.3990 vs 1.3991); 1,000 is the peers'
    "strongest" setting, for the benches. Cost: ``steps`` forward+backward passes and
    one extra forward on the last iterate.
    """

    family = "success"
    default_loss = "ce_difference"

    def __init__(self, steps: int = 100, alpha_init: float = 1.0, alpha_final: float | None = None,
                 gamma_init: float = 0.05, gamma_final: float = 0.001, min_growth: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.steps = check_count("steps", steps)
        self.alpha_init = check_positive("alpha_init", alpha_init)
        self.alpha_final = check_positive("alpha_final", alpha_init / 100 if alpha_final is None else alpha_final,
                                          allow_zero=True)
        # gamma_k scales eps up (no adversarial yet) or down (adversarial) by (1 +- gamma_k): 0 at
        # the start would leave eps fixed; both schedules anneal down (cosine), never up
        self.gamma_init = check_range("gamma_init", gamma_init, "(0, 1)")
        self.gamma_final = check_range("gamma_final", gamma_final, "[0, 1)")
        for what, init, final in (("gamma", self.gamma_init, self.gamma_final),
                                  ("alpha", self.alpha_init, self.alpha_final)):
            if final > init:
                raise ValueError(f"{what}_final ({final}) must be <= {what}_init ({init}): the schedule "
                                 "anneals from init down to final")
        self.min_growth = check_flag("min_growth", min_growth)

    def _run(self, ctx: AttackContext) -> Tensor:
        x, norm = ctx.x, self.norm
        distance, dual = NORMS[norm], DUAL_NORMS[norm]
        worst = box_radius(x, norm)
        best = BestTracker(x, distance)
        eps = torch.zeros_like(worst)
        y = x.clone()
        for i in range(self.steps):
            seen = quantize_8bit(y) if self.quantize else y
            logits, loss, g = ctx.loss_and_grad(seen)
            adv = ctx.is_adv(logits)
            best.update(seen, adv)
            gamma = cosine_step(i, self.steps, self.gamma_init, self.gamma_final)
            to_boundary = distance(seen - x) + loss.abs() / dual(g).clamp_min(1e-12)
            grown = eps * (1.0 + gamma)
            grown = torch.where(best.found, grown, torch.maximum(grown, to_boundary) if self.min_growth else to_boundary)
            eps = torch.minimum(torch.where(adv, torch.minimum(eps * (1.0 - gamma), best.best_l2), grown), worst)
            alpha = cosine_step(i, self.steps, self.alpha_init, self.alpha_final)
            y = project_ball(y - alpha * normalize_l2(g), x, eps, norm)
        seen = quantize_8bit(y) if self.quantize else y
        best.update(seen, ctx.is_adv(ctx.logits(seen)))
        return best.result()[0]


@register_attack("fmn_l2")
class FMNL2(_FMN):
    """FMN minimising the L2 distortion (Pintor et al. 2021)."""

    norm = "l2"


@register_attack("fmn_linf")
class FMNLinf(_FMN):
    """FMN minimising the Linf distortion (Pintor et al. 2021); the kept best is the least Linf."""

    norm = "linf"
