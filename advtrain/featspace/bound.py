"""D2B's quantile bound and polynomial barrier (FEATURE_ATTACKS.md 1.2 steps 3-4, 1.8).

For a benign activation a0 at quantile q = Phi((a0 - mu) / sigma) of its training distribution the
allowed interval is [l, h] = mu + sigma Phi^-1([q - quantile, q + quantile]) (the paper's epsilon is
D2B's ``quantile``). A side where q -/+ quantile leaves (0, 1) is unbounded (Phi^-1 = -/+inf): its
ratio is masked to exactly 0, never inf / inf.
With start p, c_l = a0 - p (a0 - l), c_h = a0 + p (h - a0):

    r(a) = relu((c_l - a) / (p (a0 - l))) + relu((a - c_h) / (p (h - a0))),   barrier = sum_j r_j^N

r = 0 in the central part of the interval, 1 on its ends, and r^N explodes beyond (1.1^200 = 2e8).
The bounds are derived in float64; past ``R_LINEAR`` the power is continued linearly (same value and
slope there), so value and gradient stay finite in float32 (Sec. 1.8's overflow pitfall), where the
attack computes r and the barrier.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..ops.checks import check_range

if TYPE_CHECKING:
    from .stats import ActivationStats

#: r beyond which r^N continues linearly: 1.25^200 = 2.4e19 and slope 200 * 1.25^199 = 3.9e21
R_LINEAR = 1.25


def check_quantile(quantile: float) -> float:
    return check_range("quantile", quantile, "(0, 1)")


def floored_std(std: Tensor, rel_floor: float) -> Tensor:
    """sigma floored at ``rel_floor`` x the plane's median sigma (MNIST's constant background has
    sigma = 0: such neurons stay nearly frozen), and at 1e-6 absolutely."""
    floor = max(rel_floor * float(std.double().median()), 1e-6)
    return std.double().clamp_min(floor)


class QuantileBound:
    """Per-input bounds of one plane, and the barrier ratios r of activations ``a`` against them."""

    def __init__(self, a0: Tensor, mean: Tensor, std: Tensor, quantile: float, start: float = 0.5) -> None:
        quantile = check_quantile(quantile)
        if not 0.0 < start <= 1.0:
            raise ValueError(f"barrier start must lie in (0, 1], got {start}")
        a0, mean, std = a0.detach().double(), mean.to(a0.device).double(), std.to(a0.device).double()
        q = torch.special.ndtr((a0 - mean) / std).clamp(0.0, 1.0)
        self.lo_open = q - quantile <= 0.0  # unbounded below
        self.hi_open = q + quantile >= 1.0  # unbounded above
        lo = mean + std * torch.special.ndtri((q - quantile).clamp(1e-300, 1.0))
        hi = mean + std * torch.special.ndtri((q + quantile).clamp(0.0, 1.0 - 1e-16))
        tiny = torch.finfo(torch.float64).tiny
        self.a0 = a0
        self.lo, self.hi = torch.where(self.lo_open, -torch.inf, lo), torch.where(self.hi_open, torch.inf, hi)
        w_lo, w_hi = start * (a0 - lo).clamp_min(tiny), start * (hi - a0).clamp_min(tiny)
        # r = (a - clamp(a, c_l, c_h)) s: the slope s is -1/w_l below the central part, 1/w_h above; an
        # open side gets c = -/+inf and s = -/+1 (its excess is never nonzero: r is exactly 0, no inf / inf)
        self._params = torch.stack([torch.where(self.lo_open, -torch.inf, a0 - w_lo),
                                    torch.where(self.hi_open, torch.inf, a0 + w_hi),
                                    torch.where(self.lo_open, -1.0, -1.0 / w_lo),
                                    torch.where(self.hi_open, 1.0, 1.0 / w_hi)])  # c_l, c_h, s_l, s_h
        self._cast: dict[torch.dtype, Tensor] = {}
        self._gathered: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def ratio(self, a: Tensor, index: Tensor | None = None) -> Tensor:
        """r per neuron for activations ``a`` of the samples ``index`` (default all); at most one side
        is outside: r = (a - clamp(a, c_l, c_h)) s_side.

        Computed in float64 for float64 activations, else in float32: the bounds are derived in
        float64 once, and r only needs float32's relative precision (the in-bound test is r <= 1;
        ``barrier`` keeps r^N finite in float32 by its linear continuation). Half the cost of
        float64 elementwise work on the attack's every step."""
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        c_lo, c_hi, s_lo, s_hi = self.params(dtype, index)
        a = a.to(dtype)
        e = a - torch.clamp(a, c_lo, c_hi)
        return e * torch.where(e < 0, s_lo, s_hi)

    def params(self, dtype: torch.dtype, index: Tensor | None = None) -> Tensor:
        """(c_l, c_h, s_l = -1/w_l, s_h = 1/w_h) in ``dtype`` for the samples ``index`` (open sides at -/+ the
        dtype's largest finite value: float32 never holds inf, whose 0 * inf would be NaN)."""
        params = self._cast.get(dtype)
        if params is None:
            big = torch.finfo(dtype).max
            params = self._cast[dtype] = self._params.clamp(-big, big).to(dtype)
        if index is None:
            return params
        # the attack asks for the same active samples step after step: gather once per set
        last = self._gathered.get(dtype)
        if last is None or not torch.equal(last[0], index):
            last = self._gathered[dtype] = (index.clone(), params[:, index])
        return last[1]


class _FusedBarrier(torch.autograd.Function):
    """sum_j barrier(r_j(a_j)) per sample and max_j r_j, with the derivative in a computed in the same
    pass. Only the neurons with r > 0 (outside the central part of their interval: a few percent, as
    the attack keeps activations in bound) enter r, the power and the derivative, gathered by index;
    the backward scatters their derivatives into zeros. Dense work: a clamp, a subtraction and a
    nonzero."""

    @staticmethod
    def forward(ctx, a: Tensor, params: Tensor, power: int) -> tuple[Tensor, Tensor]:
        c_lo, c_hi, s_lo, s_hi = params
        # e = a - clamp(a, c_l, c_h): the signed excess beyond the central part, nonzero exactly where
        # r > 0; r = e s_l below (e < 0, s_l = -1/w_l), e s_h above; dr / da = s
        e = torch.clamp(a, c_lo, c_hi)
        e = torch.sub(a, e, out=e).view(-1)  # in place: one large buffer a step, not two
        # inside, e = a - a = +0.0, whose bits are all zero: nonzero on the integer view skips the
        # float comparison pass (bool-producing ops are the slow ones on the CPU)
        nz = e.view(torch.int64 if e.dtype == torch.float64 else torch.int32).nonzero().squeeze(1)
        sample = nz // a[0].numel()
        e_s = e.index_select(0, nz)
        slope_s = torch.where(e_s < 0, s_lo.reshape(-1).index_select(0, nz), s_hi.reshape(-1).index_select(0, nz))
        rs = e_s * slope_s
        r_max = torch.zeros(len(a), dtype=a.dtype, device=a.device).scatter_reduce_(0, sample, rs, "amax")
        rc = rs.clamp_max(R_LINEAR)
        rp = rc ** (power - 1)
        slope = power * R_LINEAR ** (power - 1)
        terms = rc * rp + slope * (rs - R_LINEAR).clamp_min(0)
        value = torch.zeros(len(a), dtype=a.dtype, device=a.device).index_add_(0, sample, terms)
        # d value / d r = power rc^(N-1): r^N's derivative up to R_LINEAR, the linear slope beyond
        dv = rp.mul_(power * slope_s)
        ctx.save_for_backward(nz, sample, dv)
        ctx.shape = a.shape
        ctx.mark_non_differentiable(r_max)
        return value, r_max

    @staticmethod
    def backward(ctx, grad_value: Tensor, grad_r: Tensor):  # noqa: ARG004 (r_max is not differentiable)
        nz, sample, dv = ctx.saved_tensors
        grad = torch.zeros(ctx.shape.numel(), dtype=dv.dtype, device=dv.device)
        grad.index_copy_(0, nz, dv * grad_value.index_select(0, sample))
        return grad.view(ctx.shape), None, None


def bounded_barrier(bound: QuantileBound, a: Tensor, index: Tensor | None = None,
                    power: int = 200) -> tuple[Tensor, Tensor]:
    """(``barrier(bound.ratio(a, index), power)``, the largest ratio per sample), fused: the attack's
    per-step path. ``index=None``: all the bound's samples (no gather)."""
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    return _FusedBarrier.apply(a.to(dtype).contiguous(), bound.params(dtype, index), power)


def barrier(r: Tensor, power: int = 200) -> Tensor:
    """sum_j r_j^power per sample (in r's dtype), continued linearly beyond ``R_LINEAR``."""
    inside = r.clamp_max(R_LINEAR) ** power
    slope = power * R_LINEAR ** (power - 1)
    return (inside + slope * (r - R_LINEAR).clamp_min(0)).flatten(1).sum(1)


def plane_bounds(stats: "ActivationStats", a0: dict[str, Tensor], quantile: float | dict[str, float],
                 rel_floor: float, start: float = 0.5) -> dict[str, QuantileBound]:
    """A :class:`QuantileBound` per plane; ``quantile`` one quantile for all planes or one per plane."""
    out = {}
    for k, a in a0.items():
        e = quantile[k] if isinstance(quantile, dict) else quantile
        out[k] = QuantileBound(a, stats.mean[k], floored_std(stats.std[k], rel_floor), e, start)
    return out
