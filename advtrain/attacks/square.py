"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
attack via random search"), Linf (Alg. 1-2) and L2 (Alg. 3): score-based, no gradients.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .base import Attack, AttackContext
from ..ops.checks import check_budget, check_count, check_fraction, check_seed
from .losses import is_adversarial
from ..ops.norms import clip_box, l2_norm, project_linf, project_sphere, quantize as quantize_8bit, view_as_batch
from .registry import register_attack

#: iterations (of a 10,000-query budget) after which p halves (Sec. 4, rescaled to ``queries``)
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i: int, queries: int, p_init: float) -> float:
    """p at iteration ``i``: ``p_init`` halved at each of ``HALVINGS`` passed (rescaled to ``queries``)."""
    it = int(i / queries * 10000)
    return p_init / 2 ** sum(it > h for h in HALVINGS)


def window_index(n: int, c: int, s: int, top: Tensor, left: Tensor) -> tuple[Tensor, ...]:
    """Advanced indices of an s x s window at (top, left) per sample, every channel: ``t[idx]`` is [n, c, s, s]."""
    ar = torch.arange(s, device=top.device)
    return (torch.arange(n, device=top.device).view(n, 1, 1, 1), torch.arange(c, device=top.device).view(1, c, 1, 1),
            (top.view(n, 1, 1, 1) + ar.view(1, 1, s, 1)), (left.view(n, 1, 1, 1) + ar.view(1, 1, 1, s)))


def rings(a: int, b: int, device: torch.device) -> Tensor:
    """A pseudo-Gaussian a x b block (Sec. 3.3): the value at Chebyshev distance d from the centre
    (a // 2, b // 2) is sum_{k >= d} 1 / (k + 1)^2 over the concentric rings; unit L2 norm."""
    i = (torch.arange(a, device=device) - a // 2).abs().view(a, 1)
    j = (torch.arange(b, device=device) - b // 2).abs().view(1, b)
    d = torch.maximum(i, j)
    k = max(a // 2, b // 2) + 1
    tail = (1.0 / torch.arange(1, k + 1, device=device, dtype=torch.float32) ** 2).flip(0).cumsum(0).flip(0)
    block = tail[d]
    return block / block.norm()


def two_halves(s: int, device: torch.device) -> Tensor:
    """The L2 update's s x s pattern eta^(s) (Sec. 3.3): two ring blocks of opposite sign stacked
    (top: +, bottom: -), unit L2 norm; returns it and its transpose, [2, s, s]."""
    top = s // 2
    block = torch.cat([rings(top, s, device), -rings(s - top, s, device)]) if top else rings(s, s, device)
    block = block / block.norm()
    return torch.stack([block, block.T])


class _Square(Attack):
    """Random search (Alg. 1): from an initial perturbation, propose per sample a change of one random
    s x s window (s^2 ~ p h w, p following :func:`p_schedule`), query the model once, keep the
    proposal when it lowers the loss (default ``margin``: z_y - max_{k != y} z_k, clamped at 0;
    targeted: max_{k != t} z_k - z_t). A sample stops at its first adversarial query (early stop).

    Only forward passes under ``no_grad``: no gradient is ever taken (``grads = 0``, ``queries`` counts
    the batched forward passes); gradient masking cannot fool it. ``queries`` proposals per sample
    after the initial one (AutoAttack: 5000, ``p_init`` 0.8). With ``quantize`` every proposal is
    rounded to 8 bits before it is queried, so the search runs on the grid and the returned images
    are the adversarial (or best) rounded points it found. ``seed`` fixes the random generator.
    """

    family = "distortion"
    uses_gradients = False
    default_loss = "margin"
    default_eps: float

    def __init__(self, eps: float | None = None, queries: int = 5000, p_init: float = 0.8, seed: int = 0,
                 **kw) -> None:
        super().__init__(**kw)
        self.eps = check_budget(self.default_eps if eps is None else eps, self.norm)
        self.queries = check_count("queries", queries)
        self.p_init = check_fraction("p_init", p_init)
        self.seed = check_seed(seed)

    def _init(self, x: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _propose(self, x: Tensor, best: Tensor, p: float, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _query(self, ctx: AttackContext, v: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and success of the images ``v`` (samples ``idx``): one forward pass, no gradient."""
        y = ctx.y[idx]
        t = None if ctx.targets is None else ctx.targets[idx]
        logits = ctx.logits(v)
        return self.loss_fn(logits, y, t), is_adversarial(logits, y, t)

    def _round(self, v: Tensor) -> Tensor:
        return quantize_8bit(v) if self.quantize else v

    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        all_idx = torch.arange(x.shape[0], device=x.device)
        best = self._round(self._init(x, gen))
        best_f, done = self._query(ctx, best, all_idx)
        for i in range(1, self.queries + 1):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            cand = self._round(self._propose(x[idx], best[idx], p_schedule(i, self.queries, self.p_init), gen))
            f, adv = self._query(ctx, cand, idx)
            better = f < best_f[idx]
            take = idx[better]
            best[take] = cand[better]
            best_f[take] = f[better]
            done[take] = adv[better]
        return best

    def _windows(self, n: int, h: int, w: int, s: int, gen: torch.Generator, device) -> tuple[Tensor, Tensor]:
        """Random top-left corners of s x s windows, one per sample."""
        top = torch.randint(0, h - s + 1, (n,), generator=gen, device=device)
        left = torch.randint(0, w - s + 1, (n,), generator=gen, device=device)
        return top, left

    def _signs(self, shape: tuple[int, ...], gen: torch.Generator, like: Tensor) -> Tensor:
        return torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1


@register_attack("square_linf")
class SquareLinf(_Square):
    """Square attack in Linf (Alg. 2). Init: vertical stripes x + eps * (+-1) per column and channel.
    Proposal: the window's pixels, per channel, all set to x + eps or x - eps (sign at random,
    redrawn while the window would not change), clipped to the box."""

    norm = "linf"
    default_eps = 0.3
    #: sign redraws of a proposal that would leave its window unchanged (the paper's code redraws;
    #: AutoAttack's port, and torchattacks', does not and wastes those queries)
    redraws: ClassVar[int] = 10

    def _init(self, x: Tensor, gen: torch.Generator) -> Tensor:
        n, c, _, w = x.shape
        return project_linf(x + self.eps * self._signs((n, c, 1, w), gen, x), x, self.eps)

    def _propose(self, x: Tensor, best: Tensor, p: float, gen: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        s = min(max(round((p * h * w) ** 0.5), 1), min(h, w) - 1)
        idx = window_index(n, c, s, *self._windows(n, h, w, s, gen, x.device))
        old, base = best[idx], x[idx]
        new = clip_box(base + self.eps * self._signs((n, c, 1, 1), gen, x))
        for _ in range(self.redraws):  # redraw the signs of windows the proposal would leave unchanged
            same = (new - old).flatten(1).abs().amax(1) < 1e-7
            if not bool(same.any()):
                break
            new[same] = clip_box(base[same] + self.eps * self._signs((int(same.sum()), c, 1, 1), gen, x))
        cand = best.clone()
        cand[idx] = new
        return cand


@register_attack("square_l2")
class SquareL2(_Square):
    """Square attack in L2 (Alg. 3). Init: a grid of (h // 5)-sized ring blocks (:func:`rings`) with
    random signs per channel, scaled to ||delta|| = eps. Proposal, with delta = best - x: pick windows
    W1 and W2 (s x s, s odd >= 3); in W1 per channel put eta^(s) (:func:`two_halves`, random
    orientation and sign) plus delta_W1 / ||delta_W1||, scaled to sqrt(||delta_{W1 u W2}||^2 +
    [eps^2 - ||delta||^2]_+ / c); zero W2 (the mass moves from W2 to W1); rescale delta to norm eps
    and clip to the box."""

    norm = "l2"
    default_eps = 2.0

    def _init(self, x: Tensor, gen: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        delta = torch.zeros_like(x)
        block = rings(s, s, x.device).to(x.dtype)
        off_h, off_w = (h - 5 * s) // 2 if h >= 5 * s else 0, (w - 5 * s) // 2 if w >= 5 * s else 0
        for top in range(off_h, h - s + 1, s):
            for left in range(off_w, w - s + 1, s):
                delta[:, :, top:top + s, left:left + s] = block * self._signs((n, c, 1, 1), gen, x)
        return clip_box(project_sphere(x + delta, x, torch.full((n,), self.eps, device=x.device, dtype=x.dtype)))

    def _propose(self, x: Tensor, best: Tensor, p: float, gen: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        s = max(round((p * h * w) ** 0.5), 3)
        s = min(s + 1 - s % 2, min(h, w) - (1 - min(h, w) % 2))  # odd, at most the image side
        delta = best - x
        w1 = window_index(n, c, s, *self._windows(n, h, w, s, gen, x.device))
        w2 = window_index(n, c, s, *self._windows(n, h, w, s, gen, x.device))
        union = torch.zeros_like(x)
        union[w1] = 1.0
        union[w2] = 1.0
        mass_union = (delta * union).pow(2).sum((2, 3), keepdim=True)   # per channel
        unused = (self.eps ** 2 - l2_norm(delta) ** 2).clamp_min(0)
        old = delta[w1]
        old_norm = old.pow(2).sum((2, 3), keepdim=True).sqrt()
        pattern = two_halves(s, x.device).to(x.dtype)[torch.randint(0, 2, (n,), generator=gen, device=x.device)]
        new = pattern[:, None] * self._signs((n, c, 1, 1), gen, x) + old / (old_norm + 1e-10)
        new_norm = new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new = new / new_norm * (mass_union + view_as_batch(unused, x) / c).sqrt()
        delta = delta.clone()
        delta[w2] = 0.0
        delta[w1] = new
        radius = torch.full((n,), self.eps, device=x.device, dtype=x.dtype)
        return clip_box(project_sphere(x + delta, x, radius))
