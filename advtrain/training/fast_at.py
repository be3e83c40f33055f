"""Single-step ("fast") adversarial training: N-FGSM's inner attack and GradAlign's regularizer.

FGSM with a random start (Wong et al. 2020) needs no class of its own: ``pgd_linf`` with ``steps: 1``,
``alpha: 1.25 eps``, ``random_start: true`` is exactly it (uniform start in the eps-ball, one signed
step, projection onto the ball and the box).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.checks import check_positive
from ..attacks.gradient import IFGSM
from ..ops.norms import clip_box
from ..registry import Registry

#: attacks that exist for training only (not evaluation attacks: N-FGSM leaves the eps-ball)
INNER_ATTACKS: Registry = Registry("inner attack", sets_name=True)


@INNER_ATTACKS.register("nfgsm")
class NFGSM(IFGSM):
    """N-FGSM (de Jorge et al. 2022, Alg. 1): x' = clip_[0,1](x + eta + alpha sign grad), eta ~ U(-k eps, k eps).

    One step of size ``alpha`` (default eps) from a start with ``noise`` k = 2 times the budget, and no
    projection onto the eps-ball (its perturbation reaches (k + 1) eps in Linf): only the pixel box.
    """

    def __init__(self, eps: float = 0.3, noise: float = 2.0, alpha: float | None = None, *,
                 quantize: bool = False, loss: str | None = None, eval_mode: bool = True) -> None:
        check_positive("noise", noise)
        self.noise = float(noise)
        super().__init__(eps=eps, steps=1, alpha=alpha, random_start=True, quantize=quantize, loss=loss,
                         eval_mode=eval_mode)

    def _default_alpha(self) -> float:
        return self.eps

    def _random_init(self, x: Tensor) -> Tensor:
        k = self.noise * self.eps
        return clip_box(x + torch.empty_like(x).uniform_(-k, k))

    def _project(self, y: Tensor, x: Tensor) -> Tensor:
        return clip_box(y)


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool = False) -> Tensor:
    """d CE(f(x), y) / dx (summed over the batch), kept in the graph with ``create_graph``."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x, create_graph=create_graph)
    return g


def gradalign_penalty(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """GradAlign (Andriushchenko & Flammarion 2020, eq. 6): E[1 - cos(grad_x l(x), grad_x l(x + eta))],
    eta ~ U(-eps, eps)^d. Double backprop through the gradient at the noisy point only (the gradient at x
    is a constant, as in the authors' code); the model runs in its current (training) mode."""
    g1 = input_gradient(model, x, y).flatten(1)
    x_noisy = clip_box(x + torch.empty_like(x).uniform_(-eps, eps))
    g2 = input_gradient(model, x_noisy, y, create_graph=True).flatten(1)
    return (1.0 - F.cosine_similarity(g1, g2, dim=1, eps=1e-12)).mean()
