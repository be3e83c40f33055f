"""Replacement strategies of thesis 6.3.3: plain, L2 (eq. 6.3), Linf (eq. 6.4), Linear (eq. 6.5).

Each maps original patches ``p`` and their nearest codewords ``q = q_k(p)`` (rows of the same
shape) to the replacing patches ``p'``. Their parameter ``strength`` (the thesis' epsilon) says how
far ``p`` moves toward ``q``: at most ``strength`` in L2 or Linf, or the fraction ``strength`` (linear);
0 keeps ``p``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..ops.norms import TINY



def plain(p: Tensor, q: Tensor, strength: float) -> Tensor:
    """p' = q_k(p)."""
    return q


def l2(p: Tensor, q: Tensor, strength: float) -> Tensor:
    """Thesis eq. 6.3: keep q if ||q - p|| < strength, else p + strength n(q - p) (projection on the L2 ball)."""
    diff = q - p
    norm = diff.norm(dim=-1, keepdim=True)
    return torch.where(norm < strength, q, p + diff * (strength / norm.clamp_min(TINY)))


def linf(p: Tensor, q: Tensor, strength: float) -> Tensor:
    """Thesis eq. 6.4: p' = p + clip_[-strength, strength](q - p)."""
    return p + (q - p).clamp(-strength, strength)


def linear(p: Tensor, q: Tensor, strength: float) -> Tensor:
    """Thesis eq. 6.5: p' = p + strength (q - p); strength = 1 is the plain strategy."""
    return p + strength * (q - p)


STRATEGIES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "plain": plain, "l2": l2, "linf": linf, "linear": linear,
}


def get_strategy(name: str, strength: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The strategy ``name`` with its parameter bound; clear errors for bad names or strength."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown replacement strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if strength is None or not strength >= 0:
        raise ValueError(f"strategy strength must be >= 0, got {strength}")
    fn = STRATEGIES[name]
    return lambda p, q: fn(p, q, float(strength))
