"""The image graph of thesis 4.2 (eq. 4.1) and its symmetric normalisation, batched and sparse.

Vertices are the n = H*W pixels of the guide image x_o; pixel i links to its 4 or 8 nearest
neighbours j with weight w_ij = k_f(x_i, x_j) k_s(t_i, t_j) (eq. 4.1), where x_i is the
d-channel colour of pixel i and t_i its coordinates. The graph is stored matrix-free as one
weight map per neighbour offset, already normalised: W_norm = D^{-1/2} W D^{-1/2} with
D = diag(W 1_n) (thesis 4.2, "Filtering"). Each image of a batch has its own graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.checks import check_choice, check_positive
from ..ops.norms import TINY

FEATURE_KERNELS = ("laplacian", "gaussian")
NEIGHBOURHOODS = {4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
                  8: ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))}
#: thesis 4.4.1 uses a Laplacian feature kernel; its deviation is not given, 0.1 (pixel units)
#: makes an edge of contrast 1 cut the graph (weight e^-10) while keeping flat areas connected.
DEFAULT_SIGMA_F = 0.1


def shift(v: Tensor, dy: int, dx: int) -> Tensor:
    """out[..., y, x] = v[..., y + dy, x + dx], zero outside the image."""
    h, w = v.shape[-2:]
    padded = F.pad(v, (1, 1, 1, 1))
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


@dataclass
class ImageGraph:
    """Normalised adjacency W_norm of a batch of images: ``weights[b, k, y, x]`` links pixel
    (y, x) to (y + dy_k, x + dx_k); zero where that neighbour is outside the image."""

    offsets: tuple[tuple[int, int], ...]
    weights: Tensor  # [B, K, H, W]

    @property
    def shape(self) -> tuple[int, int, int]:
        b, _, h, w = self.weights.shape
        return b, h, w

    def adjacency_matvec(self, v: Tensor) -> Tensor:
        """W_norm v for a signal ``v`` [B, C, H, W] (each channel a column, thesis 4.2)."""
        h, w = v.shape[-2:]
        padded = F.pad(v, (1, 1, 1, 1))  # once, then one fused multiply-add per neighbour
        out = torch.zeros_like(v)
        for k, (dy, dx) in enumerate(self.offsets):
            out.addcmul_(self.weights[:, k:k + 1], padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
        return out

    def dense_adjacency(self) -> Tensor:
        """W_norm as a dense [B, n, n] matrix (small images only)."""
        b, h, w = self.shape
        n = h * w
        dense = self.weights.new_zeros(b, n, n)
        index = torch.arange(n, device=self.weights.device).view(h, w)
        for k, (dy, dx) in enumerate(self.offsets):
            ys = slice(max(0, -dy), min(h, h - dy))
            xs = slice(max(0, -dx), min(w, w - dx))
            i = index[ys, xs].flatten()
            j = index[max(0, -dy) + dy:min(h, h - dy) + dy, max(0, -dx) + dx:min(w, w - dx) + dx].flatten()
            dense[:, i, j] = self.weights[:, k, ys, xs].flatten(1)
        return dense

    def smoothness(self, r: Tensor) -> Tensor:
        """Per-sample quadratic form tr(r^T (I - W_norm) r) / ||r||^2 in [0, 2] (thesis eq. 4.2-4.3).

        Equals (1/2) sum_ij w_ij ||r-hat_i - r-hat_j||^2 / ||r||^2: low when r is smooth like x_o.
        """
        num = (r * (r - self.adjacency_matvec(r))).flatten(1).sum(1)
        return num / r.flatten(1).square().sum(1).clamp_min(TINY)


def check_graph_options(feature_kernel: str = "laplacian", sigma_f: float = 1.0, sigma_s: float = 1.0,
                        neighbours: int = 8) -> None:
    """Validate ``image_graph``'s options (before any image: the smooth attacks check at construction)."""
    check_choice("feature_kernel", feature_kernel, FEATURE_KERNELS)
    if neighbours not in NEIGHBOURHOODS or isinstance(neighbours, bool):
        raise ValueError(f"neighbours must be one of {sorted(NEIGHBOURHOODS)}, got {neighbours!r}")
    check_positive("sigma_f", sigma_f)
    check_positive("sigma_s", sigma_s)


def image_graph(x_o: Tensor, feature_kernel: str = "laplacian", sigma_f: float = DEFAULT_SIGMA_F,
                sigma_s: float = 1.0, neighbours: int = 8) -> ImageGraph:
    """Build the normalised graph of each image of ``x_o`` [B, d, H, W] (thesis eq. 4.1).

    k_f = exp(-||x_i - x_j|| / sigma_f) ("laplacian") or exp(-||x_i - x_j||^2 / 2 sigma_f^2)
    ("gaussian"); k_s = exp(-||t_i - t_j||^2 / 2 sigma_s^2) on the ``neighbours`` (4 or 8)
    nearest pixels, 0 elsewhere.
    """
    if x_o.dim() != 4 or not x_o.is_floating_point():
        raise ValueError(f"x_o must be a floating-point NCHW (4-D) batch, got {tuple(x_o.shape)}")
    if not bool(torch.isfinite(x_o).all()):
        raise ValueError("the guide image x_o contains NaN or Inf values")
    check_graph_options(feature_kernel, sigma_f, sigma_s, neighbours)
    x_o = x_o.detach()
    offsets = NEIGHBOURHOODS[neighbours]
    inside = torch.ones_like(x_o[:, :1])
    raw = []
    for dy, dx in offsets:
        dist2 = (shift(x_o, dy, dx) - x_o).square().sum(1, keepdim=True)
        k_f = torch.exp(-dist2.sqrt() / sigma_f) if feature_kernel == "laplacian" \
            else torch.exp(-dist2 / (2 * sigma_f ** 2))
        k_s = math.exp(-(dy * dy + dx * dx) / (2 * sigma_s ** 2))
        raw.append(k_f * k_s * shift(inside, dy, dx))
    w = torch.cat(raw, dim=1)  # [B, K, H, W]
    inv_sqrt_deg = w.sum(1, keepdim=True).clamp_min(TINY).rsqrt()
    neighbour_isd = torch.cat([shift(inv_sqrt_deg, dy, dx) for dy, dx in offsets], dim=1)
    return ImageGraph(offsets=offsets, weights=w * inv_sqrt_deg * neighbour_isd)
