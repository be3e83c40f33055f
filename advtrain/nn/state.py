"""The one guard of a model's state: eval mode and frozen parameters for a block, both restored.

Every place that switches a model to eval mode (attacks, the evaluation protocol, the transfer
matrix, patch-codebook fitting and the codebook callback's accuracy, activation statistics) goes
through :func:`model_state`: each submodule's ``training`` flag and each parameter's
``requires_grad`` are recorded on entry and put back on exit, also on errors.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def model_state(model: nn.Module, eval_mode: bool = True, freeze: bool = True) -> Iterator[None]:
    """``model.eval()`` (when ``eval_mode``) and ``requires_grad=False`` on its parameters (when
    ``freeze``) for the duration; every submodule's training flag and every parameter's flag restored."""
    modes = {m: m.training for m in model.modules()}
    flags = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    try:
        if eval_mode:
            model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def frozen_eval(model: nn.Module, eval_mode: bool = True) -> contextlib.AbstractContextManager[None]:
    """Eval mode (unless ``eval_mode=False``) and ``requires_grad=False`` on parameters; both restored."""
    return model_state(model, eval_mode=eval_mode, freeze=True)


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Eval mode for the duration (parameters untouched); every submodule's training flag restored."""
    return model_state(model, eval_mode=True, freeze=False)
