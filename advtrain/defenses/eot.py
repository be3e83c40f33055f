"""Randomized models: detection, EOT for the attacks, robustness scored over draws.

A model is *randomized* when its output on the same input varies from call to call (pixel
deflection, random resizing, noise injection). Attacked through one random draw and scored on one
draw, its robustness depends on the draw. Athalye, Carlini & Wagner 2018 (sec. 4.3, 5.3) attack such
models with Expectation over Transformation (EOT; Athalye, Engstrom et al. 2018): the gradient of the
expectation over the randomness, estimated as a mean over draws; AutoAttack's ``rand`` version uses
20 draws per gradient (Croce & Hein 2020).

- :func:`randomness`: how a model was found randomized (a submodule declares ``randomized = True``,
  or two eval-mode forwards of the same batch differ), or None.
- :class:`EOT`: what the attacks see, with no code of their own. ``AttackContext.loss_and_grad`` (the
  one place most attacks take their loss gradient: APGD, FMN, DDN, BP, PGD, FGSM, DeepFool) averages
  the per-draw losses of ``EOT.eot_draws``, so the gradient is the mean of the per-draw loss
  gradients (AutoAttack's). Attacks that differentiate an objective of their own through the forward
  (FAB, C&W, ALMA, ...) get the draws' mean logits, whose backward is the mean of the per-draw
  vector-Jacobian products. Each draw is its own call of the model (a defense that draws one random
  parameter per batch still gets independent draws). An attack counts one gradient (query) per call;
  :meth:`advtrain.attacks.base.Attack.__call__` multiplies both counts by ``eot_samples``.
- :func:`misclassified`: the evaluation's success over ``draws`` calls: an image counts as robust only
  if every draw classifies it correctly.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.checks import check_count
from ..attacks.losses import is_adversarial

#: AutoAttack's ``rand`` version: 20 draws per EOT gradient
DEFAULT_EOT_SAMPLES = 20
#: draws an adversarial (or clean) image is scored on when the model is randomized
DEFAULT_SCORE_DRAWS = 10
#: two forwards "differ" beyond float noise (nondeterministic GPU kernels): relative and absolute tolerance
RTOL, ATOL = 1e-4, 1e-5


def declares_randomness(model: nn.Module) -> bool:
    """True when ``model`` or a submodule declares ``randomized = True`` (e.g. pixel deflection)."""
    return any(getattr(m, "randomized", False) is True for m in model.modules())


def randomness(model: nn.Module, x: Tensor) -> str | None:
    """How ``model`` was found randomized: ``"declared"`` or ``"two forwards differ"``; None when it
    is deterministic on ``x`` (one batch of clean images; the model is run as it is: call it in eval
    mode)."""
    if declares_randomness(model):
        return "declared"
    with torch.no_grad():
        a, b = model(x), model(x)
    return None if torch.allclose(a, b, rtol=RTOL, atol=ATOL) else "two forwards differ"


class EOT(nn.Module):
    """``model`` seen through Expectation over Transformation over ``samples`` random draws (one call
    each). Attacks that take their loss gradient with ``AttackContext.loss_and_grad`` (APGD, FMN, DDN,
    BP, PGD, FGSM, DeepFool) get the mean of the per-draw loss gradients, as AutoAttack's ``rand``
    version does (``eot_draws``); the others (FAB, C&W, ALMA, ...) differentiate their objective f of
    the forward's logits, the draws' mean z_bar: gradient ``mean_k J_k^T grad f(z_bar)``, the mean of
    the per-draw vector-Jacobian products (J_k the draw's Jacobian)."""

    def __init__(self, model: nn.Module, samples: int = DEFAULT_EOT_SAMPLES) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"EOT expects an nn.Module, got {type(model).__name__}")
        check_count("eot_samples", samples)
        self.model = model
        self.eot_samples = samples  # read by Attack.__call__ to count every draw

    def eot_draws(self, x: Tensor) -> list[Tensor]:
        """The logits of ``eot_samples`` calls of the model, one random draw each."""
        return [self.model(x) for _ in range(self.eot_samples)]

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack(self.eot_draws(x)).mean(dim=0)

    def extra_repr(self) -> str:
        return f"samples={self.eot_samples}"


def misclassified(model: nn.Module, x: Tensor, y: Tensor, draws: int = 1) -> Tensor:
    """Per image, True when at least one of ``draws`` calls of ``model`` misclassifies it (no gradient):
    the image survives only if it survives every draw."""
    check_count("score draws", draws)
    wrong = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    with torch.no_grad():
        for _ in range(draws):
            wrong |= is_adversarial(model(x), y)  # a non-finite row is never a success
    return wrong


def plan_draws(model: nn.Module, attack_model: nn.Module, x: Tensor, eot_samples: int | None = None,
               score_draws: int | None = None) -> dict:
    """The evaluation's draws: ``randomized`` (how the evaluated ``model`` was found randomized, or
    None), ``eot_samples`` (draws per attack gradient: default 20 when ``attack_model`` is randomized,
    else 1) and ``score_draws`` (draws an image is scored on: default 10 when ``model`` is randomized,
    else 1). ``x``: a batch of clean images; both models are run as they are (eval mode)."""
    for name, value in (("eot_samples", eot_samples), ("score_draws", score_draws)):
        if value is not None:
            check_count(name, value)
    scored = randomness(model, x)
    attacked = scored if attack_model is model else randomness(attack_model, x)
    return {"randomized": scored,
            "eot_samples": eot_samples or (DEFAULT_EOT_SAMPLES if attacked else 1),
            "score_draws": score_draws or (DEFAULT_SCORE_DRAWS if scored else 1)}


def describe_draws(draws: dict) -> str:
    """report.md's line on randomness, EOT and the scoring draws (``plan_draws``' dict)."""
    how, k, s = draws["randomized"], draws["eot_samples"], draws["score_draws"]
    head = f"- randomized model ({how})" if how else "- deterministic model"
    eot = (f"attacked with **EOT over {k} draws** per gradient (gradients averaged over draws; # grads counts "
           "every draw)" if k > 1 else "attacked on **one random draw** per gradient (no EOT)")
    score = (f"accuracy and success scored over **{s} draws** (an image is robust only if it survives every draw)"
             if s > 1 else "scored on one draw")
    return f"{head}: {eot}; {score}"
