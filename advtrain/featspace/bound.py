"""D2B's quantile bound and polynomial barrier (FEATURE_ATTACKS.md 1.2 steps 3-4, 1.8).

For a benign activation a0 at quantile q = Phi((a0 - mu) / sigma) of its training distribution the
allowed interval is [l, h] = mu + sigma Phi^-1([q - eps, q + eps]). A side where q -/+ eps leaves
(0, 1) is unbounded (Phi^-1 = -/+inf): its ratio is masked to exactly 0, never inf / inf.
With start p, c_l = a0 - p (a0 - l), c_h = a0 + p (h - a0):

    r(a) = relu((c_l - a) / (p (a0 - l))) + relu((a - c_h) / (p (h - a0))),   barrier = sum_j r_j^N

r = 0 in the central part of the interval, 1 on its ends, and r^N explodes beyond (1.1^200 = 2e8).
All of it runs in float64; past ``R_LINEAR`` the power is continued linearly (same value and slope
there), so value and gradient stay finite in float32 (Sec. 1.8's overflow pitfall).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .stats import ActivationStats

#: r beyond which r^N continues linearly: 1.25^200 = 2.4e19 and slope 200 * 1.25^199 = 3.9e21
R_LINEAR = 1.25


def check_quantile(eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 < float(eps) < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {eps!r}")
    return float(eps)


def floored_std(std: Tensor, rel_floor: float) -> Tensor:
    """sigma floored at ``rel_floor`` x the plane's median sigma (MNIST's constant background has
    sigma = 0: such neurons stay nearly frozen), and at 1e-6 absolutely."""
    floor = max(rel_floor * float(std.double().median()), 1e-6)
    return std.double().clamp_min(floor)


class QuantileBound:
    """Per-input bounds of one plane, and the barrier ratios r of activations ``a`` against them."""

    def __init__(self, a0: Tensor, mean: Tensor, std: Tensor, eps: float, start: float = 0.5) -> None:
        eps = check_quantile(eps)
        if not 0.0 < start <= 1.0:
            raise ValueError(f"barrier start must lie in (0, 1], got {start}")
        a0, mean, std = a0.detach().double(), mean.to(a0.device).double(), std.to(a0.device).double()
        q = torch.special.ndtr((a0 - mean) / std).clamp(0.0, 1.0)
        self.lo_open = q - eps <= 0.0  # unbounded below
        self.hi_open = q + eps >= 1.0  # unbounded above
        lo = mean + std * torch.special.ndtri((q - eps).clamp(1e-300, 1.0))
        hi = mean + std * torch.special.ndtri((q + eps).clamp(0.0, 1.0 - 1e-16))
        tiny = torch.finfo(torch.float64).tiny
        self.a0 = a0
        self.lo, self.hi = torch.where(self.lo_open, -torch.inf, lo), torch.where(self.hi_open, torch.inf, hi)
        w_lo, w_hi = start * (a0 - lo).clamp_min(tiny), start * (hi - a0).clamp_min(tiny)
        # an open side gets c = -/+inf and 1/w = 1: its term is -inf, clamped to exactly 0 (no inf / inf)
        self._params = torch.stack([torch.where(self.lo_open, -torch.inf, a0 - w_lo),
                                    torch.where(self.hi_open, torch.inf, a0 + w_hi),
                                    torch.where(self.lo_open, 1.0, 1.0 / w_lo),
                                    torch.where(self.hi_open, 1.0, 1.0 / w_hi)])  # c_l, c_h, 1/w_l, 1/w_h

    def ratio(self, a: Tensor, index: Tensor | None = None) -> Tensor:
        """r per neuron (float64) for activations ``a`` of the samples ``index`` (default all); at
        most one side is positive, so r = relu(max(lower term, upper term))."""
        c_lo, c_hi, inv_lo, inv_hi = self._params if index is None else self._params[:, index]
        a = a.double()
        return torch.maximum((c_lo - a) * inv_lo, (a - c_hi) * inv_hi).clamp_min(0)


def barrier(r: Tensor, power: int = 200) -> Tensor:
    """sum_j r_j^power per sample (float64), continued linearly beyond ``R_LINEAR``."""
    inside = r.clamp_max(R_LINEAR) ** power
    slope = power * R_LINEAR ** (power - 1)
    return (inside + slope * (r - R_LINEAR).clamp_min(0)).flatten(1).sum(1)


def plane_bounds(stats: "ActivationStats", a0: dict[str, Tensor], eps: float | dict[str, float],
                 rel_floor: float, start: float = 0.5) -> dict[str, QuantileBound]:
    """A :class:`QuantileBound` per plane; ``eps`` one quantile for all planes or one per plane."""
    out = {}
    for k, a in a0.items():
        e = eps[k] if isinstance(eps, dict) else eps
        out[k] = QuantileBound(a, stats.mean[k], floored_std(stats.std[k], rel_floor), e, start)
    return out
