"""MI-FGSM (Dong et al. 2018) with the input-transformation options of the transfer literature.

The momentum base of every transfer attack here (NAA, FIA, NRDM, FDA, ILPD in ``feature_level.py``):

    g_t     = mu g_{t-1} + T(grad J(D(x_t))) / mean|T(grad J(D(x_t)))|     (L1-mean normalisation)
    x_{t+1} = proj_{B_inf[x; eps]} (x_t - alpha sign(g_t)), then the [0, 1] box

with J the attacker loss (minimised, advtrain's convention; MI-FGSM ascends cross-entropy, the same
thing with the sign flipped), D the input diversity of DI-FGSM (Xie et al. 2019; ``diversity_prob``)
and T the translation-invariance smoothing of TI-FGSM (Dong et al. 2019; ``ti_kernel``).
``pi_beta > 0`` adds the patch-wise step of PI-FGSM (Gao et al. 2020): amplified steps whose part
beyond eps is projected onto the neighbouring pixels. The images are rounded to 8 bits at the end
when ``quantize`` (as I-FGSM).

Cost: ``steps`` forward+backward passes, plus whatever a subclass's ``_prepare`` spends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Attack, AttackContext
from ..ops.checks import check_budget, check_count, check_odd_size, check_positive, check_range
from ..ops.norms import project_linf, view_as_batch
from .registry import register_attack


def gaussian_kernel(size: int, nsig: float = 3.0) -> Tensor:
    """A normalised ``size x size`` Gaussian over [-nsig, nsig] (TI-FGSM's smoothing kernel)."""
    t = torch.linspace(-nsig, nsig, size)
    k1 = torch.exp(-t ** 2 / 2)
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


def depthwise(t: Tensor, kernel: Tensor) -> Tensor:
    """Convolve every channel of ``t`` [B, C, H, W] with the same 2-D ``kernel`` ('same' padding)."""
    c = t.shape[1]
    w = kernel.to(t)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(t, w, padding=kernel.shape[-1] // 2, groups=c)


def input_diversity(x: Tensor, prob: float, rate: float) -> Tensor:
    """DI-FGSM's transform, with probability ``prob``: resize to a random size in [H, rate H),
    zero-pad at a random offset to rate H, then resize back to H x W (so fixed-size nets take it;
    Xie et al. feed the padded image to a globally pooled net instead). Differentiable in ``x``."""
    if prob <= 0 or float(torch.rand(())) >= prob:
        return x
    h, w = x.shape[-2:]
    big_h, big_w = max(round(h * rate), h + 1), max(round(w * rate), w + 1)
    rh = int(torch.randint(h, big_h, ()))
    rw = min(max(round(rh * w / h), w), big_w - 1)
    scaled = F.interpolate(x, size=(rh, rw), mode="nearest")
    top, left = int(torch.randint(0, big_h - rh + 1, ())), int(torch.randint(0, big_w - rw + 1, ()))
    padded = F.pad(scaled, (left, big_w - rw - left, top, big_h - rh - top))
    return F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)


def patch_kernel(size: int) -> Tensor:
    """PI-FGSM's projection kernel: uniform over the ``size x size`` neighbourhood, centre excluded."""
    k = torch.ones(size, size)
    k[size // 2, size // 2] = 0.0
    return k / k.sum()


@register_attack("mifgsm", "mi_fgsm")
class MomentumIterative(Attack):
    """MI-FGSM (momentum I-FGSM) with DI / TI / PI options; see the module docstring for the update.

    Args:
        eps: Linf budget (default 16/255, the transfer papers' budget on ImageNet).
        steps, alpha, decay: T, the step (default eps / T) and the momentum mu (1.0, Dong et al.).
        diversity_prob, resize_rate: DI-FGSM's probability (0 = off; 0.5 in Xie et al., 0.7 in
            NAA-PD) and the padded size ratio (331/299 in the papers).
        ti_kernel, ti_nsig: TI-FGSM's Gaussian kernel size (0 = off; odd, 15 on ImageNet) and radius.
        pi_beta, pi_gamma, pi_kernel: PI-FGSM's amplification (0 = off; 10 in Gao et al., 2.5 in
            NAA-PD), projection factor (relative to the amplified step) and kernel size.
    """

    norm = "linf"

    def __init__(self, eps: float = 16 / 255, steps: int = 10, alpha: float | None = None,
                 decay: float = 1.0, diversity_prob: float = 0.0, resize_rate: float = 331 / 299,
                 ti_kernel: int = 0, ti_nsig: float = 3.0, pi_beta: float = 0.0, pi_gamma: float = 0.5,
                 pi_kernel: int = 3, **kw) -> None:
        super().__init__(**kw)
        self.eps, self.steps = check_budget(eps, self.norm), check_count("steps", steps)
        self.alpha = check_positive("alpha", alpha) if alpha is not None else self.eps / self.steps
        self.decay = check_positive("decay", decay, allow_zero=True)
        self.diversity_prob = check_range("diversity_prob", diversity_prob, "[0, 1]")
        # the padded size over the image size
        self.resize_rate = check_range("resize_rate", resize_rate, "(1, inf)")
        self.ti_kernel = check_odd_size("ti_kernel", ti_kernel, allow_zero=True)
        self.ti_nsig = check_positive("ti_nsig", ti_nsig)
        self.pi_beta = check_positive("pi_beta", pi_beta, allow_zero=True)  # 0: PI-FGSM off
        self.pi_gamma = check_positive("pi_gamma", pi_gamma, allow_zero=True)
        # the projection kernel spreads onto the neighbours, centre excluded: at least 3 x 3
        self.pi_kernel = check_odd_size("pi_kernel", pi_kernel, minimum=3)

    # ------------------------------------------------------------------ hooks for the subclasses
    def _prepare(self, ctx: AttackContext) -> None:
        """Work before the iterations (feature-level attacks: attribution weights, clean features)."""

    def _start(self, ctx: AttackContext) -> Tensor:
        """The first iterate (NRDM starts from a noisy image: its loss is flat at x)."""
        return ctx.x.clone()

    def _objective(self, ctx: AttackContext, x: Tensor) -> Tensor:
        """Per-sample loss to minimise at the (transformed) input ``x``: the attacker loss here."""
        return ctx.loss_fn(ctx.forward(x), ctx.y, ctx.targets)

    # ------------------------------------------------------------------ the update
    def _grad(self, ctx: AttackContext, x_adv: Tensor) -> Tensor:
        """d objective(D(x_adv)) / d x_adv: one forward+backward, counted."""
        x_adv = x_adv.detach().requires_grad_(True)
        loss = self._objective(ctx, input_diversity(x_adv, self.diversity_prob, self.resize_rate))
        (g,) = torch.autograd.grad(loss.sum(), x_adv)
        return g.detach()

    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        self._prepare(ctx)
        x_adv = self._start(ctx)
        momentum = torch.zeros_like(x)
        ti = gaussian_kernel(self.ti_kernel, self.ti_nsig) if self.ti_kernel > 1 else None
        amplified = torch.zeros_like(x)  # PI-FGSM's accumulated amplified perturbation
        for _ in range(self.steps):
            g = self._grad(ctx, x_adv)
            if ti is not None:
                g = depthwise(g, ti)
            g = g / view_as_batch(g.abs().flatten(1).mean(1).clamp_min(torch.finfo(g.dtype).tiny), g)
            momentum = self.decay * momentum + g
            step = -self.alpha * momentum.sign()
            if self.pi_beta > 0:
                step = self._patch_step(step, amplified)
                amplified = amplified + step
            x_adv = project_linf(x_adv + step, x, self.eps)
        return self._finish(x_adv)

    def _patch_step(self, step: Tensor, amplified: Tensor) -> Tensor:
        """PI-FGSM: the step amplified by beta; the accumulated part beyond eps ("cut noise") is
        spread onto the neighbours with the projection kernel (Gao et al. 2020, Alg. 1)."""
        step = self.pi_beta * step
        total = amplified + step
        cut = (total.abs() - self.eps).clamp_min(0.0) * total.sign()
        gamma = self.pi_gamma * self.pi_beta * self.alpha
        return step + gamma * depthwise(cut, patch_kernel(self.pi_kernel)).sign()
