"""The gradient count is measured (autograd hooks in ``AttackContext``), not declared by the attacks,
and equals what every registered attack reported when it counted by hand: the sanity checks decide
"single-step" and "black-box" from it (``evaluation/sanity.py``), so a miscount changes a verdict."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.attacks import ATTACKS
from advtrain.attacks.base import AttackContext
from advtrain.attacks.losses import get_loss

from featspace_files import untrained_style_pair
from grad_counts import record

ANCHOR = Path(__file__).resolve().parent / "anchors" / "grad_counts.json"


def test_every_attack_reports_the_count_it_reported_by_hand():
    """``tests/anchors/grad_counts.json``: recorded with the hand-counting attacks (commit 69642d6; the L1 attacks apgd_l1, apgd_t_l1, fab_l1 at d7c92c3, before the merge)."""
    want = json.loads(ANCHOR.read_text())
    assert {k.split(":", 1)[1] for k in want if k.startswith("plain:")} == set(ATTACKS), "record the new attack"
    assert record(untrained_style_pair()) == want


def _ctx(model: nn.Module, x: torch.Tensor) -> AttackContext:
    return AttackContext(model, x, torch.zeros(len(x), dtype=torch.long), None, get_loss("ce"))


def test_what_one_gradient_is():
    """One backward through the model counts one, however it is taken (backward, autograd.grad, to the
    input or to a feature), once even when it runs through several forward passes; ``copies`` stacked
    copies count ``copies``; forward passes without a backward count nothing; nobody sets it by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)).requires_grad_(False)
    x = torch.rand(5, 4)
    ctx = _ctx(model, x)
    ctx.logits(x)
    with torch.no_grad():
        ctx.forward(x)
    ctx.forward(x.clone().requires_grad_(True))  # a graph, never differentiated
    assert ctx.grads == 0
    ctx.loss_and_grad(x)
    assert ctx.grads == 1
    xr = x.clone().requires_grad_(True)
    out = ctx.forward(xr)
    for j in range(3):  # FAB: one forward, k backward passes
        torch.autograd.grad(out[:, j].sum(), xr, retain_graph=True)
    assert ctx.grads == 4
    (ctx.forward(xr).sum() + ctx.forward(2 * xr).sum()).backward()  # one backward through two forwards
    assert ctx.grads == 5
    ctx.loss_and_grad(x.repeat(3, 1), lambda z, *_: z.sum(1), copies=3)  # DeepFool's stacked candidates
    assert ctx.grads == 8
    z = torch.zeros_like(x, requires_grad=True)  # a latent (C&W): the model's input is not a leaf
    ctx.forward(torch.sigmoid(z)).sum().backward(inputs=[z])
    assert ctx.grads == 9
    with pytest.raises(AttributeError):
        ctx.grads += 1
