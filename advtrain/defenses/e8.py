"""The E8 lattice as a training-free codebook (thesis 6.3.2, "E8 lattice").

E8 = D8 ∪ (D8 + 1/2), where D8 is the set of integer 8-vectors with an even coordinate sum.
The nearest point is exact (Conway & Sloane, *Sphere Packings, Lattices and Groups*, ch. 20,
"Fast quantizing and decoding algorithms"): decode in both cosets and keep the closer one.
"""
from __future__ import annotations

import torch
from torch import Tensor


def nearest_d8(v: Tensor, dim: int = -1) -> Tensor:
    """Nearest point of D8 (integer vectors with even sum) to each 8-vector of ``v`` along ``dim``.

    Round every coordinate; if the sum is odd, re-round the coordinate with the largest rounding
    error the other way (Conway & Sloane's g(x)). Elementwise passes only, in any layout.
    """
    f = torch.round(v)
    err = v - f
    odd = f.sum(dim=dim, keepdim=True).remainder(2) != 0
    worst = err.abs().argmax(dim=dim, keepdim=True)
    # the other way: towards v, i.e. +1 where v was rounded down (err >= 0), -1 otherwise
    step = torch.where(err.gather(dim, worst) >= 0, 1.0, -1.0).to(v.dtype)
    return f.scatter_add(dim, worst, step * odd)


class E8Lattice:
    """The scaled lattice s·E8; ``nearest_point(v)`` maps each 8-vector to its nearest lattice point.

    Args:
        scale: s > 0; the lattice points are ``s * E8`` (smaller s: denser codewords).
    """

    dim = 8

    def __init__(self, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"E8 scale must be > 0, got {scale}")
        self.scale = float(scale)

    def __repr__(self) -> str:
        return f"E8Lattice(scale={self.scale})"

    def nearest_point(self, v: Tensor, dim: int = -1) -> Tensor:
        """Nearest point of ``scale * E8`` to each 8-vector of ``v`` along ``dim`` (exact)."""
        if v.dim() == 0 or v.shape[dim] != self.dim:
            raise ValueError(f"E8 quantizes 8-vectors: dimension {dim} must be 8, got {tuple(v.shape)}")
        x = v / self.scale
        p0 = nearest_d8(x, dim)
        p1 = nearest_d8(x - 0.5, dim) + 0.5
        d0 = (x - p0).pow(2).sum(dim=dim, keepdim=True)
        d1 = (x - p1).pow(2).sum(dim=dim, keepdim=True)
        return torch.where(d1 < d0, p1, p0) * self.scale
