"""BPDA (thesis 6.6; Athalye et al. 2018): the defense in the forward pass, identity (or a
differentiable approximation) in the backward pass."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class _BPDA(torch.autograd.Function):
    """forward: ``defense(x)``; backward: identity, or the vector-Jacobian product of ``approx``."""

    @staticmethod
    def forward(ctx, x: Tensor, defense: nn.Module, approx: Callable[[Tensor], Tensor] | None) -> Tensor:
        ctx.approx = approx
        ctx.save_for_backward(x)
        with torch.no_grad():
            return defense(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.approx is None:
            return grad_out, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(ctx.approx(xr), xr, grad_out)
        return grad, None, None


class BPDA(nn.Module):
    """A defense attacked through BPDA; its forward output is exactly the defense's."""

    needs_bpda = False  # it is the BPDA

    def __init__(self, defense: nn.Module, approx: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.defense = defense
        self.approx = approx

    def forward(self, x: Tensor) -> Tensor:
        return _BPDA.apply(x, self.defense, self.approx)

    def extra_repr(self) -> str:
        return f"backward={'identity' if self.approx is None else getattr(self.approx, '__name__', 'approx')}"


def bpda(defense: nn.Module, approx: Callable[[Tensor], Tensor] | None = None) -> BPDA:
    """Wrap ``defense`` for attacks: forward = defense, backward = identity or ``approx``'s gradient."""
    if not isinstance(defense, nn.Module):
        raise TypeError(f"bpda expects an nn.Module defense, got {type(defense).__name__}")
    if approx is not None and not callable(approx):
        raise TypeError("approx must be a differentiable callable Tensor -> Tensor")
    return BPDA(defense, approx)
