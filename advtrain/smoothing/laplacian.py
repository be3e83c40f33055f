"""Regularized Laplacian L_alpha = (I - alpha W_norm) / (1 - alpha) (thesis eq. 4.3)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops.checks import check_range
from .graph import ImageGraph


def check_alpha(alpha: float) -> None:
    """alpha in [0, 1): 0 is the all-pass filter, -> 1 a strict low-pass (thesis 4.2)."""
    check_range("alpha", alpha, "[0, 1)")


def laplacian_matvec(graph: ImageGraph, alpha: float, v: Tensor) -> Tensor:
    """L_alpha v for ``v`` [B, C, H, W], matrix-free (eq. 4.3)."""
    return (v - alpha * graph.adjacency_matvec(v)) / (1.0 - alpha)


def dense_laplacian(graph: ImageGraph, alpha: float) -> Tensor:
    """L_alpha as a dense [B, n, n] matrix (eq. 4.3)."""
    lap = graph.dense_adjacency().mul_(-alpha)  # in place: [B, n, n] is large (128 MNIST images: 315 MB)
    lap.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return lap.div_(1.0 - alpha)
