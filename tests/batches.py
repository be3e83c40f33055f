"""Test-batch helpers shared by test files (fixtures stay in conftest.py)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def correctly_classified(model: nn.Module, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor, float]:
    """The first ``n`` images ``model`` classifies correctly, their labels, and its accuracy on ``x``."""
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep][:n], y[keep][:n], float(keep.float().mean())
