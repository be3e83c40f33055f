"""Carlini & Wagner L2 (thesis eq. 2.18-2.19) and its smooth variant sC&W (thesis eq. 4.14).

Both minimise, per sample and by Adam on a latent z, ||r(z)||^2 + c J_mu(f(x_adv(z)), y), with
the constant c = 1/lambda of eq. 2.18 tuned per sample by binary search ("5x20": 5 values of c
x 20 Adam steps; "1x100": ``search_steps=1, steps=100``). They differ only by the
reparameterisation z -> (x_adv, r):
  C&W:  x_adv = sigma(z), r = x_adv - x, z initialised at sigma^{-1}(x)  (eq. 2.18);
  sC&W: r = s-hat_alpha(z) smoothed like x, x_adv = clip(x + r), z initialised at 0  (eq. 4.14).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from ..smoothing import LaplacianSmoother, check_smoothing_options
from .base import Attack, AttackContext, BestTracker
from ..ops.checks import check_count, check_positive
from .losses import margin_loss
from ..ops.norms import clip_box, quantize as quantize_8bit
from .registry import register_attack

_LOGIT_MARGIN = 1e-6  # sigma^{-1} is infinite on {0, 1}: clean pixels are pulled in by this much


@register_attack("cw_l2")
class CarliniWagnerL2(Attack):
    """C&W L2: Adam on z minimising ||sigma(z) - x||^2 + c J_mu(f(sigma(z)), y) (eq. 2.18-2.19).

    Args:
        steps: Adam steps per value of the constant c.
        search_steps: values of c tried by binary search (per sample: halve the bracket after a
            success, x10 after a failure while no success is known).
        lr: Adam learning rate eta. Defaults: thesis 5.3.1, MNIST "5x20" (eta = 0.5, c0 = 1);
            its "1x100" setting is ``search_steps=1, steps=100, lr=0.1, initial_const=10``.
        initial_const: first value of c (= 1/lambda of eq. 2.18).
        confidence: margin mu of the loss J_mu (eq. 2.19); only with ``loss="margin"``.
        quantize: every iterate is also rounded to 8 bits and the best *rounded* adversarial
            iterate is returned (rounding in the end, thesis Table 5.1; one extra forward per step).

    Returns per sample the successful iterate of least L2 (thesis 5.2.3), or x unchanged.
    Cost: ``search_steps * steps`` forward+backward passes.
    """

    family = "success"
    rounds_iterates = True
    default_loss = "margin"

    def __init__(self, steps: int = 20, search_steps: int = 5, lr: float = 0.5, initial_const: float = 1.0,
                 confidence: float = 0.0, **kw) -> None:
        super().__init__(**kw)
        self.steps, self.search_steps = check_count("steps", steps), check_count("search_steps", search_steps)
        self.lr, self.initial_const = check_positive("lr", lr), check_positive("initial_const", initial_const)
        self.confidence = check_positive("confidence", confidence, allow_zero=True)

    # -- reparameterisation hooks (overridden by sC&W) ---------------------------------------
    def _prepare(self, x: Tensor) -> Any:
        """Per-batch state shared by every iteration (sC&W: the smoother guided by x)."""
        return None

    def _init_latent(self, x: Tensor, state: Any) -> Tensor:
        """z_0 = sigma^{-1}(x): the search starts at the clean image."""
        return torch.logit(x.clamp(_LOGIT_MARGIN, 1.0 - _LOGIT_MARGIN))

    def _perturb(self, z: Tensor, x: Tensor, state: Any) -> tuple[Tensor, Tensor]:
        """(x_adv, r) of eq. 2.18: x_adv = sigma(z), r = x_adv - x."""
        x_adv = torch.sigmoid(z)
        return x_adv, x_adv - x

    # -- the shared optimisation --------------------------------------------------------------
    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        loss_fn = functools.partial(margin_loss, margin=self.confidence) if self.loss == "margin" else ctx.loss_fn
        const = torch.full((x.shape[0],), self.initial_const, device=x.device, dtype=x.dtype)
        lower, upper = torch.zeros_like(const), torch.full_like(const, float("inf"))
        best = BestTracker(x)
        state = self._prepare(x)
        for _ in range(self.search_steps):
            z = self._init_latent(x, state).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.lr)
            found = torch.zeros_like(best.found)
            for _ in range(self.steps):
                x_adv, r = self._perturb(z, x, state)
                logits = ctx.forward(x_adv)
                objective = r.flatten(1).square().sum(1) + const * loss_fn(logits, ctx.y, ctx.targets)
                opt.zero_grad(set_to_none=True)
                objective.sum().backward()
                found |= self._track(ctx, best, x_adv.detach(), logits.detach())
                opt.step()
            with torch.no_grad():  # the iterate after the last step
                found |= self._track(ctx, best, self._perturb(z, x, state)[0], None)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
        return best.result()[0]

    def _track(self, ctx: AttackContext, best: BestTracker, x_adv: Tensor, logits: Tensor | None) -> Tensor:
        """Offer an iterate (8-bit rounded when ``quantize``) to the tracker; returns its success."""
        if self.quantize:
            x_adv, logits = quantize_8bit(x_adv), None
        adv = ctx.is_adv(ctx.logits(x_adv) if logits is None else logits)
        best.update(x_adv, adv)
        return adv


@register_attack("scw_l2")
class SmoothCarliniWagnerL2(CarliniWagnerL2):
    """sC&W: C&W on a latent z with r = s-hat_alpha(z) smooth like x (thesis eq. 4.12-4.15).

    Minimises ||s-hat_alpha(z)||^2 + c J_mu(f(clip(x + s-hat_alpha(z))), y) from z = 0; the
    gradient reaches z through the smoothing's own backward (eq. 4.15).

    Args (besides C&W's):
        smooth_alpha: alpha of eq. 4.3; None picks the thesis value by image size (0.95 up to
            32x32 pixels, 0.997 above).
        solver: "auto" (dense inverse up to 32x32 pixels, CG above), "dense" or "cg".
        cg_steps: CG iterations (thesis 4.4.1: 50).
        graph: options of ``smoothing.image_graph`` (feature_kernel, sigma_f, sigma_s, neighbours).
    Default lr 0.1: z lives in pixel units here (not logits), so C&W's 0.5 overshoots.
    """

    def __init__(self, smooth_alpha: float | None = None, solver: str = "auto", cg_steps: int = 50,
                 graph: dict | None = None, lr: float = 0.1, **kw) -> None:
        super().__init__(lr=lr, **kw)
        check_smoothing_options(smooth_alpha, solver, cg_steps, {} if graph is None else graph,
                                what=f"{self.name}: graph")
        self.smooth_alpha, self.solver, self.cg_steps = smooth_alpha, solver, int(cg_steps)
        self.graph = dict(graph or {})

    def _prepare(self, x: Tensor) -> LaplacianSmoother:
        return LaplacianSmoother(x, self.smooth_alpha, self.solver, self.cg_steps, **self.graph)

    def _init_latent(self, x: Tensor, state: LaplacianSmoother) -> Tensor:
        return torch.zeros_like(x)

    def _perturb(self, z: Tensor, x: Tensor, state: LaplacianSmoother) -> tuple[Tensor, Tensor]:
        r = state(z)
        return clip_box(x + r), r
