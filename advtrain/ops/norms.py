"""Per-sample norms, projections and quantization: the one place each is written (thesis 2.5.3)."""
from __future__ import annotations

import torch
from torch import Tensor

#: floor of a divisor (a norm, a degree) that may be 0
TINY = 1e-12


def _flat(t: Tensor) -> Tensor:
    return t.flatten(1)


def view_as_batch(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``[B]`` to broadcast against ``like`` ``[B, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def l2_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm over all C*H*W values."""
    return _flat(t).norm(p=2, dim=1)


def linf_norm(t: Tensor) -> Tensor:
    """Per-sample Linf norm."""
    return _flat(t).abs().amax(dim=1)


def normalize_l2(t: Tensor) -> Tensor:
    """n(t) = t / ||t||_2 per sample (thesis eq. 2.15); zero vectors stay zero.

    The floor is the dtype's smallest normal number, not a fixed 1e-12: cross-entropy gradients of
    very confident models are ~exp(-logit gap) (1e-13 at a gap of 30) and must still give a unit
    direction, or BP/DDN stall on exactly the images that need the largest distortion.
    """
    tiny = torch.finfo(t.dtype).tiny
    t = t / view_as_batch(linf_norm(t).clamp_min(tiny), t)  # rescale first: squares of 1e-20 underflow
    return t / view_as_batch(l2_norm(t).clamp_min(tiny), t)


def box_free(d: Tensor, y: Tensor) -> Tensor:
    """The direction ``d`` restricted to the coordinates it can move at ``y`` in the box [0, 1]:
    components pushing a pixel at 0 down or a pixel at 1 up are zeroed (clipping would cancel them)."""
    return torch.where(((y <= 0.0) & (d < 0)) | ((y >= 1.0) & (d > 0)), torch.zeros_like(d), d)


def clip_box(x: Tensor) -> Tensor:
    """Element-wise clipping to the pixel box [0, 1]."""
    return x.clamp(0.0, 1.0)


def round_to_levels(x: Tensor, levels: int) -> Tensor:
    """round((l-1) x) / (l-1): ``levels`` evenly spaced values on [0, 1] (bit-depth reduction)."""
    s = levels - 1
    return torch.round(x * s) / s


def quantize(x: Tensor) -> Tensor:
    """Q(x): 8-bit rounding onto the 1/255 grid (thesis 5.3); the only meaning of "quantize"."""
    return round_to_levels(x, 256)


#: relative slack of "within the budget eps" (float32 distances of images on the 1/255 grid)
BUDGET_RTOL = 1e-5


def within_budget(distance: Tensor, eps: float) -> Tensor:
    """distance <= eps, up to float32 rounding (``BUDGET_RTOL``): the one test of "inside the ball"."""
    return distance <= eps * (1 + BUDGET_RTOL)


def quantize_within(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Q(x_adv) kept inside B_norm[x; eps] (a valid 8-bit image of the threat model): the 8-bit
    rounding, except where it leaves the ball, there rounding toward x (never farther from x than
    x_adv when x is on the grid): per pixel for Linf (separable), per image otherwise."""
    q = quantize(x_adv)
    s = x_adv * 255
    toward = torch.where(x_adv >= x, torch.floor(s + 1e-3), torch.ceil(s - 1e-3)) / 255
    if norm == "linf":
        return torch.where(within_budget((q - x).abs(), eps), q, toward)
    return torch.where(view_as_batch(within_budget(NORMS[norm](q - x), eps), x), q, toward)


def project_linf(x_adv: Tensor, x: Tensor, eps: Tensor | float) -> Tensor:
    """proj onto B_inf[x; eps] then the box (thesis eq. 2.14); ``eps`` scalar or per sample."""
    eps_t = view_as_batch(torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]), x)
    return clip_box(x + torch.maximum(torch.minimum(x_adv - x, eps_t), -eps_t))


def project_l2(x_adv: Tensor, x: Tensor, eps: Tensor | float) -> Tensor:
    """proj onto B_2[x; eps] then the box (thesis eq. 2.16)."""
    delta = x_adv - x
    norm = l2_norm(delta)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand_as(norm)
    factor = torch.where(norm > eps_t, eps_t / norm.clamp_min(TINY), torch.ones_like(norm))
    return clip_box(x + delta * view_as_batch(factor, delta))


def project_sphere(x_adv: Tensor, x: Tensor, radius: Tensor) -> Tensor:
    """Projection onto the sphere S_2[x; radius] (thesis eq. 2.20), no box clipping."""
    return x + normalize_l2(x_adv - x) * view_as_batch(radius, x)


def l1_norm(t: Tensor) -> Tensor:
    """Per-sample L1 norm."""
    return _flat(t).abs().sum(dim=1)


#: the per-sample norm of each threat model, and its dual (the norm of a gradient that gives the
#: first-order distance |f| / ||grad f||_dual to a hyperplane)
NORMS = {"l2": l2_norm, "linf": linf_norm, "l1": l1_norm}
DUAL_NORMS = {"l2": l2_norm, "linf": l1_norm, "l1": linf_norm}


def project_l1(x_adv: Tensor, x: Tensor, eps: Tensor | float) -> Tensor:
    """The exact Euclidean projection of ``x_adv`` onto B_1[x; eps] intersected with the box [0, 1]
    (Croce & Hein 2021, "Mind the box", Lemma 1); ``eps`` scalar or per sample.

    Unlike L2 and Linf, projecting onto the ball and then clipping is not the projection onto the
    intersection. With v = x_adv - x, the solution is d_i = sign(v_i) clamp(|v_i| - lam, 0, b_i), b_i
    the room the box leaves in v_i's direction (1 - x_i or x_i), lam >= 0 the least threshold with
    ||d||_1 <= eps. phi(lam) = ||d(lam)||_1 is piecewise linear and non-increasing, with breakpoints
    |v_i| - b_i (coordinate i leaves its bound) and |v_i| (it reaches 0); after sorting them phi is
    exact at each breakpoint (a cumulative sum of slopes), so lam is found by linear interpolation on
    the segment where phi crosses eps. Computed in float64 so that ||d||_1 <= eps holds after casting.
    """
    shape, dtype = x_adv.shape, x_adv.dtype
    xf, v = x.flatten(1).double(), (x_adv - x).flatten(1).double()
    a = v.abs()
    b = torch.where(v >= 0, 1.0 - xf, xf).clamp_min(0.0)
    eps_t = torch.as_tensor(eps, dtype=torch.float64, device=x.device).expand(shape[0])
    room = torch.minimum(a, b)  # the box's projection, d(0)
    # breakpoints: +1 active coordinate from |v_i| - b_i on, -1 from |v_i| on (where a_i > b_i is false,
    # |v_i| - b_i <= 0: the coordinate is active from lam = 0)
    t = torch.cat([a - b, a], dim=1)
    w = torch.cat([torch.ones_like(a), -torch.ones_like(a)], dim=1)
    t, order = t.sort(dim=1)
    active = w.gather(1, order).cumsum(1)  # coordinates moving with lam just after t_j
    gaps = torch.diff(t, dim=1, prepend=t[:, :1])
    phi = b.sum(1, keepdim=True) - torch.cat([torch.zeros_like(t[:, :1]), (active[:, :-1] * gaps[:, 1:]).cumsum(1)], 1)
    over = room.sum(1) > eps_t
    # the last breakpoint with phi >= eps: lam lies on the segment after it (phi there has slope -active)
    j = ((phi >= eps_t[:, None]).sum(1) - 1).clamp_min(0)[:, None]
    lam = t.gather(1, j) + (phi.gather(1, j) - eps_t[:, None]) / active.gather(1, j).clamp_min(1.0)
    lam = torch.where(over[:, None], lam.clamp_min(0.0), torch.zeros_like(lam))
    d = torch.sign(v) * torch.minimum((a - lam).clamp_min(0.0), b)
    return (xf + d).clamp(0.0, 1.0).to(dtype).view(shape)


#: the projection onto B_norm[x; eps] intersected with the box, per norm
PROJECTIONS = {"l2": project_l2, "linf": project_linf, "l1": project_l1}


def project_ball(x_adv: Tensor, x: Tensor, eps: Tensor | float, norm: str) -> Tensor:
    """proj onto B_norm[x; eps] and the box, ``norm`` "l2", "linf" (thesis eq. 2.14, 2.16) or "l1"."""
    return PROJECTIONS[norm](x_adv, x, eps)


def box_radius(x: Tensor, norm: str) -> Tensor:
    """The largest distortion reachable inside the box [0, 1] from x: ||max(x, 1 - x)||."""
    return NORMS[norm](torch.maximum(x, 1.0 - x))


def project_hyperplane_box(p: Tensor, w: Tensor, b: Tensor, norm: str) -> Tensor:
    """Least-``norm`` d with <w, p + d> = b and p + d in [0, 1], per sample (FAB's projection,
    Croce & Hein 2020, eq. 3 with the box).

    Both the L2 and the Linf solution are d_i(t) = clip(t v_i, -p_i, 1 - p_i) for the least t >= 0
    meeting the constraint, with v = w (L2) or sign(w) (Linf) after w, b are flipped so that the
    gap c = b - <w, p> is >= 0. phi(t) = <w, d(t)> is piecewise linear and non-decreasing with
    breakpoints t_i = s_i / v_i (s_i the bound coordinate i saturates at), so t is exact after
    sorting them: for t between breakpoints, phi(t) = sum_saturated w_i s_i + t sum_free w_i v_i.
    When even t = inf misses c (the plane lies outside the box), every coordinate saturates.

    L1 (a fractional knapsack): moving coordinate i towards its bound s_i gains |w_i| of <w, d> per
    unit of |d_i|, so the least-L1 d saturates the coordinates in decreasing order of |w_i| and moves
    the one that reaches c part of the way; the others stay.
    """
    shape = p.shape
    p, w = p.flatten(1), w.flatten(1)
    c = b - (w * p).sum(1)
    sign = torch.where(c < 0, -1.0, 1.0).to(w.dtype)
    w, c = w * sign[:, None], c * sign
    if norm == "l1":
        return _hyperplane_box_l1(p, w, c).view(shape)
    v = w if norm == "l2" else w.sign()
    lb, ub = -p, 1.0 - p
    s = torch.where(w > 0, ub, lb)
    moving = v != 0
    t = torch.where(moving, s / torch.where(moving, v, torch.ones_like(v)), torch.full_like(v, float("inf")))
    t, order = t.sort(dim=1)
    ws = (w * s * moving).gather(1, order)
    wv = (w * v).gather(1, order)
    saturated = ws.cumsum(1) - ws  # sum of w_i s_i over the breakpoints before k
    free = wv.flip(1).cumsum(1).flip(1)  # sum of w_i v_i over k and after
    phi = saturated + torch.where(free > 0, t * free, torch.zeros_like(t))
    reach = phi >= c[:, None]
    feasible = reach.any(1)
    k = reach.int().argmax(1, keepdim=True)
    lam = ((c[:, None] - saturated.gather(1, k)) / free.gather(1, k).clamp_min(torch.finfo(w.dtype).tiny)).squeeze(1)
    lam = torch.where(feasible, lam.clamp_min(0.0), torch.zeros_like(lam))
    d = torch.minimum(torch.maximum(view_as_batch(lam, v) * v, lb), ub)
    d = torch.where(feasible[:, None], d, torch.where(moving, s, torch.zeros_like(s)))
    return d.view(shape)


def _hyperplane_box_l1(p: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """``project_hyperplane_box``'s L1 case on flat [B, d] tensors, the gap c >= 0 (w flipped)."""
    s = torch.where(w > 0, 1.0 - p, -p) * (w != 0)
    order = w.abs().argsort(dim=1, descending=True)
    gain = (w * s).gather(1, order)  # >= 0: what saturating each coordinate adds to <w, d>
    before = gain.cumsum(1) - gain
    reach = before + gain >= c[:, None]
    feasible = reach.any(1)
    k = reach.int().argmax(1, keepdim=True)
    wk = w.gather(1, order.gather(1, k))
    part = ((c[:, None] - before.gather(1, k)) / torch.where(wk == 0, torch.ones_like(wk), wk))
    rank = torch.arange(w.shape[1], device=w.device)[None, :]
    d_sorted = torch.where(rank < k, s.gather(1, order), torch.zeros_like(s))
    d_sorted = d_sorted.scatter(1, k, torch.minimum(part.abs(), s.gather(1, order.gather(1, k)).abs()) * wk.sign())
    d = torch.zeros_like(s).scatter(1, order, d_sorted)
    return torch.where(feasible[:, None], d, s)
