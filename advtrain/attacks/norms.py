"""Per-sample norms, projections and quantization: the one place each is written (thesis 2.5.3)."""
from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-12


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


def quantize(x: Tensor, levels: int = 256) -> Tensor:
    """Q(x) = round((l-1) x) / (l-1): 8-bit rounding for ``levels=256`` (thesis 5.3)."""
    s = levels - 1
    return torch.round(x * s) / s


def project_linf(x_adv: Tensor, x: Tensor, eps: Tensor | float) -> Tensor:
    """proj onto B_inf[x; eps] then the box (thesis eq. 2.14); ``eps`` scalar or per sample."""
    eps_t = view_as_batch(torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0]), x)
    return clip_box(x + torch.maximum(torch.minimum(x_adv - x, eps_t), -eps_t))


def project_l2(x_adv: Tensor, x: Tensor, eps: Tensor | float) -> Tensor:
    """proj onto B_2[x; eps] then the box (thesis eq. 2.16)."""
    delta = x_adv - x
    norm = l2_norm(delta)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand_as(norm)
    factor = torch.where(norm > eps_t, eps_t / norm.clamp_min(_EPS), torch.ones_like(norm))
    return clip_box(x + delta * view_as_batch(factor, delta))


def project_sphere(x_adv: Tensor, x: Tensor, radius: Tensor) -> Tensor:
    """Projection onto the sphere S_2[x; radius] (thesis eq. 2.20), no box clipping."""
    return x + normalize_l2(x_adv - x) * view_as_batch(radius, x)
