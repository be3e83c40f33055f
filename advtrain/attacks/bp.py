"""Boundary Projection (BP), thesis chapter 5: Alg. 1 (stage 1) and Alg. 2 (stage 2), eq. 5.1-5.10."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackContext, BestTracker
from ..ops.checks import check_count, check_positive, check_range
from .losses import ce_difference
from ..ops.norms import box_free, clip_box, l2_norm, normalize_l2, project_hyperplane_box, quantize as quantize_8bit, \
    view_as_batch
from .registry import register_attack


def gamma_schedule(i: int, steps: int, gamma_min: float) -> float:
    """gamma_i = gamma_min + i / (K + 1) (1 - gamma_min) < 1 (thesis eq. 5.1)."""
    return gamma_min + i / (steps + 1) * (1.0 - gamma_min)


def quantize_step(y: Tensor, d: Tensor, beta: Tensor) -> Tensor:
    """Q(clip(y + beta d)) with a per-sample scale ``beta`` (thesis eq. 5.7, 5.10)."""
    return quantize_8bit(clip_box(y + view_as_batch(beta, y) * d))


def q_out(z: Tensor, y: Tensor, x: Tensor, v_star: Tensor, line_search_steps: int = 8) -> Tensor:
    """Q_OUT(z, y) = Q(y + beta_OUT (z - y)) (thesis eq. 5.7).

    beta_OUT is the scale for which the quantized iterate keeps the distortion ||z - x|| that
    case OUT imposes (eps, or ||v* - x|| when the sphere misses the plane; our reading of eq. 5.7,
    whose ||z|| stands for a distortion). Before quantization the distortion decreases along the
    step from y (beta = 0) down to v* (beta = B := ||v* - y|| / ||z - y|| >= 1, the point of the
    line closest to x), so the line search is a batched bisection (``line_search_steps`` halvings, elementwise
    ops only, no forward pass) for the least beta in [0, B] with ||Q(y + beta (z - y)) - x|| <=
    ||z - x||, started on [0, 1] or [1, B] by the sign at beta = 1. Searching up to v* follows
    the authors' code (its bracket runs from the sphere to v*): a small step that rounding would
    cancel is stretched until its quantized version moves. Where no beta reaches the target,
    beta = B (Q(v*), the least distortion on the line).
    """
    d = z - y
    target = l2_norm(z - x)
    top = (l2_norm(v_star - y) / l2_norm(d).clamp_min(1e-12)).clamp_min(1.0)
    at_one = l2_norm(quantize_step(y, d, torch.ones_like(target)) - x) <= target
    lo = torch.where(at_one, torch.zeros_like(target), torch.ones_like(target))
    hi = torch.where(at_one, torch.ones_like(target), top)
    for _ in range(line_search_steps):
        mid = (lo + hi) / 2
        above = l2_norm(quantize_step(y, d, mid) - x) > target
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return quantize_step(y, d, hi)


def q_in(z: Tensor, y: Tensor, beta_min: float) -> Tensor:
    """Q_IN(z, y) = Q(y + beta_IN (z - y)), beta_IN = max(1, beta_min / ||z - y||) (thesis eq. 5.10)."""
    d = z - y
    beta = (beta_min / l2_norm(d).clamp_min(1e-12)).clamp_min(1.0)
    return quantize_step(y, d, beta)


def out_target(x: Tensor, y: Tensor, g_hat: Tensor, gamma: float, sphere: bool = False) -> tuple[Tensor, Tensor]:
    """Case OUT's real-valued target z and v* (thesis eq. 5.4-5.6), per sample.

    r = y - x, rho = <r, g_hat>, eps = gamma ||r||, v* = x + rho g_hat (the point of the plane
    through y normal to g_hat closest to x), z = v* + n(y - v*) sqrt([eps^2 - rho^2]_+).
    Where the sphere ||z - x|| = eps misses the plane (|rho| > eps) eq. 5.6 gives z = v*, which is
    y itself when r is parallel to g (a linear model after stage 1): BP then never moves again.
    ``sphere=True`` takes instead the point of the sphere closest to the plane,
    z = x + eps n(v* - x), so every OUT step shrinks the distortion by gamma.
    """
    r = y - x
    rho = (r * g_hat).flatten(1).sum(1)
    eps = gamma * l2_norm(r)
    v_star = x + view_as_batch(rho, x) * g_hat
    z = v_star + normalize_l2(y - v_star) * view_as_batch((eps ** 2 - rho ** 2).clamp_min(0).sqrt(), x)
    if sphere:
        miss = view_as_batch(rho.abs() > eps, x)
        z = torch.where(miss, x + view_as_batch(eps, x) * normalize_l2(v_star - x), z)
    return z, v_star


def in_target(x: Tensor, y: Tensor, g_hat: Tensor, gamma: float) -> Tensor:
    """Case IN's real-valued target (thesis eq. 5.9): z = y - (rho + sqrt(eps^2 - ||r||^2 + rho^2)) g_hat,
    eps = ||r|| / gamma, so that ||z - x|| = eps."""
    r = y - x
    r_norm = l2_norm(r)
    rho = (r * g_hat).flatten(1).sum(1)
    eps = r_norm / gamma
    return y - view_as_batch(rho + (eps ** 2 - r_norm ** 2 + rho ** 2).clamp_min(0).sqrt(), x) * g_hat


def linear_step(x: Tensor, y: Tensor, f: Tensor, w: Tensor, eta: float, alpha_max: float) -> Tensor:
    """Stage 1 of the ``linear`` variant: one FAB step (Croce & Hein 2020, eq. 3-6) on the plane
    f + <w, z - y> = 0 that linearizes the logit gap f at y (w = grad f): d1, d2 the least-L2
    box-constrained moves of y and x onto it (``project_hyperplane_box``), a = min(||d1|| /
    (||d1|| + ||d2||), alpha_max), y <- clip((1 - a)(y + eta d1) + a (x + eta d2))."""
    b = (w * y).flatten(1).sum(1) - f
    d1, d2 = project_hyperplane_box(torch.cat([y, x]), torch.cat([w, w]), torch.cat([b, b]), "l2").chunk(2)
    n1, n2 = l2_norm(d1).clamp_min(1e-8), l2_norm(d2).clamp_min(1e-8)
    a = view_as_batch((n1 / (n1 + n2)).clamp(0.0, alpha_max), x)
    return clip_box((1.0 - a) * (y + eta * d1) + a * (x + eta * d2))


#: ``switch`` (default): Alg. 1's first step, then ``linear``'s; ``linear``: stage 1 projects onto the
#: linearized logit gap (``linear_step``), stage 2 as ``sphere``; ``sphere``: case OUT steps to the sphere's
#: point nearest the plane when the sphere misses it; ``thesis``: Alg. 1-2 exactly; ``projected``: stage 1
#: steps along n(g) restricted to the box's free coordinates (the class docstring has the numbers)
VARIANTS = ("thesis", "projected", "sphere", "linear", "switch")


@register_attack("bp")
class BP(Attack):
    """Boundary Projection: reach the boundary fast, then walk along it (thesis 5.2).

    Stage 1 (Alg. 1): y <- clip(y - alpha gamma_i n(g)) until adversarial. Stage 2 (Alg. 2), with
    r = y - x, g_hat = n(g), rho = <r, g_hat>:
      OUT (y adversarial): eps = gamma_i ||r||, v* = x + rho g_hat,
          z = v* + n(y - v*) sqrt([eps^2 - rho^2]_+) (eq. 5.4-5.6), y <- Q_OUT(z, y) (eq. 5.7);
      IN (y not adversarial): eps = ||r|| / gamma_i,
          z = y - (rho + sqrt(eps^2 - ||r||^2 + rho^2)) g_hat (eq. 5.9), y <- Q_IN(z, y) (eq. 5.10).
    gamma_i follows eq. 5.1. Every sample has its own stage and case, and computes only that one.
    Without ``quantize`` the steps are only clipped to [0, 1] (Q_OUT, Q_IN are identities).

    Checked against the authors' TensorFlow code (hanwei0912/walking-on-the-edge-...): same
    gamma_i indexing (i = 0..K-1 in eq. 5.1), stage-1 step alpha gamma_i n(g), OUT/IN targets,
    beta_min = 0.1, rounding at every step, best successful iterate kept. Q_OUT searches the
    step scale up to v* as their code does (see ``q_out``).

    Loss: Alg. 1-2 leave L generic. The authors' code uses a smoothed log-probability gap (a
    variant of eq. 2.8); we default to ``ce``, the negative cross-entropy of the true class (the
    l_g term of eq. 2.6; cross-entropy of the target when targeted). On the trained C4 (246
    correctly classified test images, 20 steps, quantized), mean L2 at success rate 1: ``ce``
    1.310, ``ce_difference`` (eq. 2.8) 1.336, the authors' smoothed gap 1.332, ``margin`` 1.341.
    Caveat: the CE gradient shrinks as exp(-logit gap); below 1e-12 (gap > ~30) n(g) no longer
    normalises and stage 1 stalls; use ``loss="ce_difference"`` on such over-confident models.
    Returns per sample the successful iterate of least L2 (the final iterate included).

    Variants (``variant``; measurements in ``bench/bp_variants_results.md``):
      ``"switch"`` (default, issue 21): Alg. 1's step at the first iteration (``switch_after`` = 1),
      then ``linear``'s stage-1 step for the images that have not crossed; stage 2 as ``sphere``. Alg. 1's
      first step crosses on part of the images (clean C4: 111 of 256); the rest, and every image of a
      gradient-masked model where Alg. 1's walk stalls, continue with linear steps.
      Quantized BP-20 on advertorch's Madry LeNet5: 0.995 / 1.700 (``sphere``: 0.340 / 2.464;
      DDN-300 0.985 / 1.950); the 12-epoch Madry C4 2.217 (``sphere`` 2.248); clean C4 and ImageNet within
      1 % of ``sphere``, per image not distinguishable from it (sign tests p 0.21, 0.32).
      ``"linear"``: every stage-1 step is one FAB step (``linear_step``: the box-constrained projection
      onto the plane linearizing the logit gap at y, overshoot ``eta`` = 5, biased towards x by at most
      ``alpha_max`` = 0.1); stage 1 takes the gap's gradient (eq. 2.8), stage 2 the attack's loss, per
      sample in the same pass. Quantized, a linear step that rounding cancels by more than half (a short
      step spread over many pixels: ~0.03 over ImageNet's 172k rounds back to y, where BP would stay)
      is replaced by Alg. 1's step (quantization-aware, as Q_IN's beta_min).
      ``"sphere"``: Alg. 1-2 except in case OUT where the sphere ||z - x|| = eps misses the plane
      (|rho| > eps): it steps to the sphere's point closest to the plane instead of v* (which is y
      itself when r is parallel to g: the thesis' BP then never moves again).
      ``"thesis"``: Alg. 1-2 exactly. ``"projected"`` (thesis otherwise) restricts stage 1's direction
      to the box's free coordinates before normalizing.

    Cost: ``steps`` forward+backward passes, one forward on the last iterate, a few elementwise
    bisection steps for Q_OUT, and (``linear``, ``switch``) one sort of the pixels per linear step.
    """

    family = "success"
    rounds_iterates = True
    default_loss = "ce"

    def __init__(self, steps: int = 20, alpha: float = 2.0, gamma_min: float = 0.7,
                 beta_min: float = 0.1, line_search_steps: int = 8, variant: str = "switch", eta: float = 5.0,
                 alpha_max: float = 0.1, switch_after: int = 1, **kw) -> None:
        super().__init__(**kw)
        self.switch_after = check_count("switch_after", switch_after, minimum=0)
        check_positive("eta", eta)
        if not 0.0 <= alpha_max <= 1.0:
            raise ValueError(f"alpha_max must lie in [0, 1], got {alpha_max}")
        self.eta, self.alpha_max = float(eta), float(alpha_max)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant = variant
        check_count("steps", steps)
        check_positive("alpha", alpha)
        check_positive("beta_min", beta_min, allow_zero=True)
        check_range("gamma_min", gamma_min, "(0, 1)")
        check_count("line_search_steps", line_search_steps)
        self.steps = int(steps)
        self.alpha = float(alpha)
        self.gamma_min = float(gamma_min)
        self.beta_min = float(beta_min)
        self.line_search_steps = int(line_search_steps)

    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        best = BestTracker(x)
        y = x.clone()
        for i in range(self.steps):
            # linear: every stage-1 step projects onto the linearized gap; switch: from step switch_after on
            linear = self.variant == "linear" or (self.variant == "switch" and i >= self.switch_after)
            if linear:  # stage 1 takes the logit gap (its value and gradient), stage 2 the attack's loss
                stage1 = ~best.found

                def loss(logits: Tensor, y_: Tensor, t: Tensor | None, stage1: Tensor = stage1) -> Tensor:
                    return torch.where(stage1, ce_difference(logits, y_, t), ctx.loss_fn(logits, y_, t))
                logits, f, g = ctx.loss_and_grad(y, loss)
            else:
                logits, f, g = ctx.loss_and_grad(y)
            adv = ctx.is_adv(logits)
            best.update(y, adv)  # stage 2 from the first adversarial iterate on (best.found)
            gamma = gamma_schedule(i, self.steps, self.gamma_min)
            g_hat = normalize_l2(g)
            # stage 1's direction: n(g), or n(g) on the coordinates the step can move (projected)
            s1 = normalize_l2(-box_free(-g, y)) if self.variant == "projected" else g_hat
            # each sample computes only its own case: stage 1, OUT or IN (the Q_OUT search is the
            # costly one); a case covering the whole batch runs without gather/scatter
            cases = (~best.found, best.found & adv, best.found & ~adv)
            steps = (self._stage1_step, self._out_step, self._in_step)
            y_next = torch.empty_like(y)
            if linear:  # stage 1 needs the raw gradient and the gap: pass (f, g) to it
                s1 = (f, g)
            for mask, step, d in zip(cases, steps, (s1, g_hat, g_hat)):
                if bool(mask.all()):
                    y_next = step(x, y, d, gamma)
                    break
                idx = mask.nonzero().squeeze(1)
                if idx.numel():
                    d = tuple(t[idx] for t in d) if isinstance(d, tuple) else d[idx]
                    y_next[idx] = step(x[idx], y[idx], d, gamma)
            y = y_next
        best.update(y, ctx.is_adv(ctx.logits(y)))
        return best.result()[0]

    def _stage1_step(self, x: Tensor, y: Tensor, g_hat: Tensor | tuple[Tensor, Tensor], gamma: float) -> Tensor:
        """Alg. 1: y - alpha gamma_i n(g), clipped (and quantized); ``linear`` / ``switch``: ``linear_step``
        on (gap, its gradient), where rounding keeps at least half of it (else Alg. 1's step)."""
        if not isinstance(g_hat, tuple):
            y1 = clip_box(y - self.alpha * gamma * g_hat)
            return quantize_8bit(y1) if self.quantize else y1
        f, g = g_hat
        y1 = linear_step(x, y, f, g, self.eta, self.alpha_max)
        if not self.quantize:
            return y1
        # a short step spread over many pixels (ImageNet: ~0.03 over 172k) rounds back to y: BP would
        # stay there for good; such a step is replaced by Alg. 1's, which rounding cannot cancel
        q = quantize_8bit(y1)
        kept = l2_norm(q - y) > 0.5 * l2_norm(y1 - y)
        alg1 = quantize_8bit(clip_box(y - self.alpha * gamma * normalize_l2(g)))
        return torch.where(view_as_batch(kept, y), q, alg1)

    def _out_step(self, x: Tensor, y: Tensor, g_hat: Tensor, gamma: float) -> Tensor:
        """Case OUT with Q_OUT (eq. 5.7): y is adversarial, shrink the distortion."""
        z, v_star = out_target(x, y, g_hat, gamma, sphere=self.variant not in ("thesis", "projected"))
        return q_out(z, y, x, v_star, self.line_search_steps) if self.quantize else clip_box(z)

    def _in_step(self, x: Tensor, y: Tensor, g_hat: Tensor, gamma: float) -> Tensor:
        """Case IN with Q_IN (eq. 5.10): y is not adversarial, grow the distortion."""
        z = in_target(x, y, g_hat, gamma)
        return q_in(z, y, self.beta_min) if self.quantize else clip_box(z)
