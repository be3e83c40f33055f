"""Bilateral filter [Tomasi & Manduchi 1998] and its joint (guided) variant, batched NCHW.

Used by adversarial magnification (thesis 4.5, eq. 4.16) and by the ``bilateral`` defense
(thesis 4.4.4 / 6.5). The kernel at pixel p is the product of a domain Gaussian on ||p - q||
(deviation ``sigma_s`` pixels) and a range Gaussian on the photometric distance
||g(p) - g(q)|| measured over all channels of the guide g (deviation ``sigma_r``), one scalar
weight per pair shared by every channel of the filtered image (thesis 4.5). Without a guide,
g = x (plain bilateral filter). Pixels outside the image get no weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: thesis 4.5: "the standard deviation of both the domain and range Gaussian kernels is 5";
#: the range deviation is on the 8-bit scale, i.e. 5/255 in [0, 1] pixel units.
DEFAULT_SIGMA_S = 5.0
DEFAULT_SIGMA_R = 5.0 / 255.0
_OUTSIDE = 1e4


def _check(x: Tensor, guide: Tensor | None, sigma_s: float, sigma_r: float, radius: int | None) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point NCHW (4-D) tensor, got {shape}")
    for name, s in (("sigma_s", sigma_s), ("sigma_r", sigma_r)):
        if not (s > 0) or math.isinf(s):
            raise ValueError(f"{name} must be a finite value > 0, got {s}")
    if radius is not None and radius < 0:
        raise ValueError(f"radius must be >= 0 or None (automatic: ceil(1.5 sigma_s)), got {radius}")
    for name, t in (("x", x), ("guide", guide)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
    if guide is not None:
        if guide.dim() != 4 or guide.shape[0] != x.shape[0] or guide.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"guide must be NCHW with the batch size and H, W of x {tuple(x.shape)}, "
                             f"got {tuple(guide.shape)}")


def bilateral_filter(x: Tensor, sigma_s: float = DEFAULT_SIGMA_S, sigma_r: float = DEFAULT_SIGMA_R,
                     radius: int | None = None, guide: Tensor | None = None) -> Tensor:
    """Bilateral filter b(x) of a batch ``x`` [B, C, H, W]; joint/guided b_g(x) when ``guide`` is given.

    b(x)(p) = sum_q k_s(p, q) k_r(g(p), g(q)) x(q) / sum_q k_s(p, q) k_r(g(p), g(q)), with
    k_s = exp(-||p - q||^2 / 2 sigma_s^2) on the disk ||p - q|| <= radius (default
    ceil(1.5 sigma_s) as OpenCV, capped by the image size) and k_r = exp(-||g(p) - g(q)||^2 / 2 sigma_r^2).
    ``guide`` [B, C', H, W] defaults to ``x``; thesis 4.5 uses the guided filter for sigma_x.
    Differentiable in ``x`` (and in ``guide``).
    """
    _check(x, guide, sigma_s, sigma_r, radius)
    g = x if guide is None else guide.to(x.dtype)
    h, w = x.shape[-2:]
    r = math.ceil(1.5 * sigma_s) if radius is None else int(radius)
    r = min(r, max(h, w) - 1)
    k = 2 * r + 1
    # out-of-image neighbours: a far-away guide value makes their range weight exactly 0
    xp = F.pad(x, (r, r, r, r))
    gp = F.pad(g, (r, r, r, r), value=_OUTSIDE)
    dxs = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    num = torch.zeros_like(x)
    den = torch.zeros_like(x[:, :1])
    for dy in range(-r, r + 1):  # one row of the window at a time: [B, C, H, W, k] views
        rows = slice(r + dy, r + dy + h)
        g_win = gp[..., rows, :].unfold(-1, k, 1)
        x_win = xp[..., rows, :].unfold(-1, k, 1)
        spatial = (dxs.square() + dy * dy) / (2 * sigma_s ** 2)
        spatial = torch.where(dxs.square() + dy * dy > r * r, torch.inf, spatial)  # disk window
        photometric = (g_win - g.unsqueeze(-1)).square().sum(dim=1, keepdim=True)
        weight = torch.exp(-(photometric / (2 * sigma_r ** 2) + spatial))
        num = num + (weight * x_win).sum(-1)
        den = den + weight.sum(-1)
    return num / den  # den >= 1: the centre pixel always has weight exp(0)
