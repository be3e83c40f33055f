"""The one model-state guard (advtrain/nn/state.py): eval mode and frozen parameters, both restored."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advtrain.nn.state import eval_mode, frozen_eval, model_state


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Dropout(), nn.Linear(2, 1)))
    net.train()
    net[2].eval()  # mixed modes: each submodule's own flag must come back
    net[0].bias.requires_grad_(False)
    return net


def _state(net: nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()]


@pytest.mark.parametrize("guard", [frozen_eval, eval_mode, lambda m: frozen_eval(m, eval_mode=False)])
def test_restored_also_on_errors(guard):
    net = _net()
    before = _state(net)
    with pytest.raises(RuntimeError, match="inside"):
        with guard(net):
            raise RuntimeError("inside")
    assert _state(net) == before


def test_what_each_guard_sets():
    net = _net()
    with frozen_eval(net):
        assert not any(m.training for m in net.modules()) and not any(p.requires_grad for p in net.parameters())
    with frozen_eval(net, eval_mode=False):
        assert net.training and not any(p.requires_grad for p in net.parameters())
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
        assert [p.requires_grad for p in net.parameters()] == _state(_net())[1]
    with model_state(net, eval_mode=False, freeze=False):
        assert _state(net) == _state(_net())
    x = torch.randn(4, 2)
    with frozen_eval(net):
        assert net(x).requires_grad is False
