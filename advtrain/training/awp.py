"""Adversarial weight perturbation (AWP; Wu et al. 2020, eq. 7-9), one ascent step per batch.

With w_l each weight matrix/kernel (tensors of dim > 1 named ``*weight*``, as the authors' code) and g_l
the gradient of the training objective at w: v_l = gamma ||w_l|| g_l / ||g_l||, and the model's gradient
is taken at w + v. The perturbation is undone by copying the saved w back (bit-exact), before the
optimizer step applies the gradient taken at w + v to w: the same update as the paper's "step, then
subtract v" (up to float rounding; with weight decay, the decay term is lr wd w instead of lr wd (w + v)).
One extra forward/backward per step (the ascent gradient); BatchNorm statistics of that extra forward
are discarded (the authors run it on a proxy copy of the model).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma < 1.0:
        raise ValueError(f"awp_gamma (relative weight-perturbation size) must lie in (0, 1) (5e-3 in Wu et al. "
                         f"2020), or be null for no AWP; got {gamma!r}")
    return float(gamma)


def perturbed_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters AWP perturbs: weights of dim > 1 (not biases, not normalization scales)."""
    return [(n, p) for n, p in model.named_parameters() if p.dim() > 1 and "weight" in n and p.requires_grad]


class WeightPerturbation:
    """``perturb(model, loss_fn)`` moves the weights to w + v; ``restore()`` puts w back exactly."""

    def __init__(self, gamma: float = 5e-3) -> None:
        self.gamma = check_gamma(gamma)
        self._saved: list[tuple[nn.Parameter, Tensor]] | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def perturb(self, model: nn.Module, loss_fn: Callable[[], Tensor]) -> None:
        """Ascent on ``loss_fn()`` (the objective at the current weights, one forward/backward)."""
        if self._saved is not None:
            raise RuntimeError("AWP: the weights are already perturbed (restore() was not called)")
        params = [p for _, p in perturbed_weights(model)]
        buffers = [b.detach().clone() for b in model.buffers()]
        grads = torch.autograd.grad(loss_fn(), params)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)  # the ascent forward's BatchNorm statistics do not count
            self._saved = [(p, p.detach().clone()) for p in params]
            for p, g in zip(params, grads):
                p.add_(g * (self.gamma * p.norm() / (g.norm() + 1e-8)))

    def restore(self) -> None:
        """Copy the saved weights back (no-op when not perturbed)."""
        if self._saved is None:
            return
        with torch.no_grad():
            for p, w in self._saved:
                p.copy_(w)
        self._saved = None
