"""Replacement strategies of thesis 6.3.3: plain, L2 (eq. 6.3), Linf (eq. 6.4), Linear (eq. 6.5).

Each maps original patches ``p`` and their nearest codewords ``q = q_k(p)`` (rows of the same
shape) to the replacing patches ``p'``. With eps = 0 every non-plain strategy is the identity.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

_EPS = 1e-12


def plain(p: Tensor, q: Tensor, eps: float) -> Tensor:
    """p' = q_k(p)."""
    return q


def l2(p: Tensor, q: Tensor, eps: float) -> Tensor:
    """Thesis eq. 6.3: keep q if ||q - p|| < eps, else p + eps n(q - p) (projection on the L2 ball)."""
    diff = q - p
    norm = diff.norm(dim=-1, keepdim=True)
    return torch.where(norm < eps, q, p + diff * (eps / norm.clamp_min(_EPS)))


def linf(p: Tensor, q: Tensor, eps: float) -> Tensor:
    """Thesis eq. 6.4: p' = p + clip_[-eps, eps](q - p)."""
    return p + (q - p).clamp(-eps, eps)


def linear(p: Tensor, q: Tensor, eps: float) -> Tensor:
    """Thesis eq. 6.5: p' = p + eps (q - p); eps = 1 is the plain strategy."""
    return p + eps * (q - p)


STRATEGIES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "plain": plain, "l2": l2, "linf": linf, "linear": linear,
}


def get_strategy(name: str, eps: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The strategy ``name`` with its parameter bound; clear errors for bad names or eps."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown replacement strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if eps is None or not eps >= 0:
        raise ValueError(f"strategy eps must be >= 0, got {eps}")
    fn = STRATEGIES[name]
    return lambda p, q: fn(p, q, float(eps))
