"""Augmented Lagrangian Method for Adversarial attacks (ALMA), Rony et al. 2021, in L2."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackContext, BestTracker
from ..ops.checks import check_count, check_positive, check_range
from .losses import _other_max
from ..ops.norms import clip_box, l2_norm, quantize as quantize_8bit, view_as_batch
from .registry import register_attack


def dlr_constraint(logits: Tensor, y: Tensor, targets: Tensor | None, tolerance: float) -> Tensor:
    """ALMA's constraint (Rony et al. 2021, eq. 9): the logit gap plus ``tolerance`` over the DLR
    normaliser (Croce & Hein 2020); <= 0 is adversarial (with a margin of ``tolerance``).

    untargeted: (z_y - max_{j != y} z_j + tol) / (z_pi1 - z_pi3);
    targeted:   (max_{j != t} z_j - z_t + tol) / (z_pi1 - (z_pi3 + z_pi4) / 2), z sorted decreasingly.
    """
    logits = logits.float()
    if targets is None:
        gap = logits.gather(1, y[:, None]).squeeze(1) - _other_max(logits, y)
        top = logits.topk(min(3, logits.shape[1]), dim=1).values
        scale = top[:, 0] - top[:, -1]
    else:
        gap = _other_max(logits, targets) - logits.gather(1, targets[:, None]).squeeze(1)
        top = logits.topk(min(4, logits.shape[1]), dim=1).values
        scale = top[:, 0] - (top[:, 2 if top.shape[1] > 3 else -1] + top[:, -1]) / 2
    return (gap + tolerance) / (scale + 1e-8)


def penalty_p2(c: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """The penalty-Lagrangian P2 (Rony et al. 2021, Table 1; Birgin et al. 2005):
    mu c + mu rho c^2 + rho^2 c^3 / 6 for c >= 0, mu c / (1 - rho c) for c < 0."""
    above = mu * c + mu * rho * c ** 2 + rho ** 2 * c ** 3 / 6
    below = mu * c / (1 - rho * c.clamp(max=0))
    return torch.where(c >= 0, above, below)


def penalty_p2_grad(c: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """dP2/dc: the multiplier update's target (Rony et al. 2021, eq. 7)."""
    above = mu + 2 * mu * rho * c + rho ** 2 * c ** 2 / 2
    below = mu / (1 - rho * c.clamp(max=0)) ** 2
    return torch.where(c >= 0, above, below)


def initial_lr(x: Tensor, g: Tensor, target: float, bisection_steps: int = 20) -> Tensor:
    """Per-sample eta with ||clip(x - eta g) - x||_2 = ``target`` (ALMA's first step size, "epsilon"
    of Rony et al. 2021, sec. 4): doubling to bracket it, then ``bisection_steps`` bisection steps. The
    distance is non-decreasing in eta; samples whose gradient cannot reach it get the bracket's top."""
    def dist(eta: Tensor) -> Tensor:
        return l2_norm(clip_box(x - view_as_batch(eta, x) * g) - x)

    hi = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    lo = torch.zeros_like(hi)
    for _ in range(64):
        short = dist(hi) < target
        if not bool(short.any()):
            break
        lo, hi = torch.where(short, hi, lo), torch.where(short, hi * 2, hi)
    for _ in range(bisection_steps):
        mid = (lo + hi) / 2
        far = dist(mid) > target
        lo, hi = torch.where(far, lo, mid), torch.where(far, mid, hi)
    return (lo + hi) / 2


@register_attack("alma_l2")
class ALMAL2(Attack):
    """ALMA: minimise ||delta||_2 + P2(c(x + delta), rho, mu) with RMSProp and momentum.

    Per step i (Rony et al. 2021, Alg. 1), c the DLR constraint (``dlr_constraint``):
      mu <- alpha mu + (1 - alpha) dP2/dc (clamped to [1e-6, 1e12]), from step 1 on;
      every ``check_steps`` steps, rho <- ``rho_growth`` rho where no adversarial was found yet and
      c did not fall below ``tau`` times its value at the previous check;
      delta <- clip(x + delta - eta_i m) - x, m the momentum (``alpha``) of the RMS-normalised
      gradient (squared average initialised to 1, smoothing ``alpha``);
      eta_i = eta_0 ``lr_reduction`` ^ ((i - i_found) / (K - i_found)): constant until the sample's
      first adversarial (step i_found), then decayed exponentially to eta_0 * lr_reduction.
    The first step minimises the penalty alone and sets eta_0 so that it moves the image by
    ``init_lr_distance`` in L2 (``initial_lr``). Defaults: the paper's L2 setting (1,000 steps,
    alpha 0.9, init_lr_distance 0.1, mu_0 = rho_0 = 1, M = 10, tau 0.95, gamma 1.2, reduction
    0.01, tolerance 1e-4); for 100 steps the authors use alpha 0.5.

    ``quantize``: delta stays real-valued; the model sees (and the tracker keeps) its 8-bit
    rounding Q(x + delta), so the result is the best successful ROUNDED iterate at no extra cost.

    Cost: ``steps`` forward+backward passes, one extra forward on the last iterate.
    """

    family = "success"

    def __init__(self, steps: int = 1000, alpha: float = 0.9, init_lr_distance: float = 0.1,
                 lr_reduction: float = 0.01, mu_init: float = 1.0, rho_init: float = 1.0, check_steps: int = 10,
                 tau: float = 0.95, rho_growth: float = 1.2, tolerance: float = 1e-4, **kw) -> None:
        super().__init__(**kw)
        self.steps, self.check_steps = check_count("steps", steps), check_count("check_steps", check_steps)
        self.alpha, self.lr_reduction, self.tau = (check_range(name, value, "(0, 1)") for name, value in
                                                   (("alpha", alpha), ("lr_reduction", lr_reduction), ("tau", tau)))
        self.init_lr_distance, self.mu_init, self.rho_init = (
            check_positive(name, value) for name, value in
            (("init_lr_distance", init_lr_distance), ("mu_init", mu_init), ("rho_init", rho_init)))
        self.tolerance = check_positive("tolerance", tolerance, allow_zero=True)
        self.rho_growth = check_range("rho_growth", rho_growth, "(1, inf)")

    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        n = x.shape[0]
        best = BestTracker(x)
        delta = torch.zeros_like(x)
        square_avg, momentum = torch.ones_like(x), torch.zeros_like(x)
        mu = torch.full((n,), self.mu_init, device=x.device)
        rho = torch.full((n,), self.rho_init, device=x.device)
        found_at = torch.full((n,), float(self.steps), device=x.device)
        lr = prev_c = None
        for i in range(self.steps):
            seen = (quantize_8bit(x + delta) if self.quantize else x + delta).requires_grad_(True)
            logits = ctx.forward(seen)
            c = dlr_constraint(logits, ctx.y, ctx.targets, self.tolerance)
            c_value = c.detach()
            if i == 0:
                prev_c = c_value
            elif (i + 1) % self.check_steps == 0:
                stalled = ~(best.found | (c_value < self.tau * prev_c))
                rho = torch.where(stalled, self.rho_growth * rho, rho)
                prev_c = c_value
            if i:
                mu = (self.alpha * mu + (1 - self.alpha) * penalty_p2_grad(c_value, rho, mu)).clamp(1e-6, 1e12)
            adv = ctx.is_adv(logits.detach())
            found_at = torch.where(~best.found & adv, float(i), found_at)
            best.update(seen.detach(), adv)
            objective = penalty_p2(c, rho, mu)
            if i:  # ||delta||_2 has no gradient at delta = 0
                objective = objective + l2_norm(seen - x)
            (g,) = torch.autograd.grad(objective.sum(), seen)
            if i == 0:
                lr = initial_lr(x, g, self.init_lr_distance)
            decay = self.lr_reduction ** ((i - found_at).clamp(min=0) / (self.steps - found_at).clamp(min=1))
            square_avg = self.alpha * square_avg + (1 - self.alpha) * g * g
            momentum = self.alpha * momentum + g / (square_avg.sqrt() + 1e-8)
            delta = clip_box(x + delta - view_as_batch(lr * decay, x) * momentum) - x
        seen = quantize_8bit(x + delta) if self.quantize else x + delta
        best.update(seen, ctx.is_adv(ctx.logits(seen)))
        return best.result()[0]
