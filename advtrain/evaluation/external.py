"""Models not written by train.py, for ``evaluate.py --model``: a factory name (``c4``, ``timm:...``,
``torchvision:...``) or ``pkg.module:callable`` returning an ``nn.Module`` that takes [0, 1] pixels
(as RobustBench's ``load_model`` does); optional weights loaded safely (``weights_only`` / safetensors).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from torch import nn

from ..models import build_model, load_state_dict_safely
from ..models.factory import load_fitting


def safe_name(spec: str) -> str:
    """A folder name for a model spec (``timm:resnet18`` -> ``timm_resnet18``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("._") or "model"


def is_callable_spec(spec: str) -> bool:
    """``pkg.module:callable`` (a factory name such as ``timm:resnet18`` has no dot before its colon)."""
    module, sep, attr = spec.partition(":")
    return bool(sep) and bool(attr) and ("." in module or module not in ("timm", "torchvision"))


def from_callable(spec: str) -> nn.Module:
    """Import ``pkg.module`` and call its ``callable()``; it must return an ``nn.Module``."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError and whatever the module raises while importing
        raise ValueError(f"--model {spec}: cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model {spec}: module {module_name!r} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory: its failure is one line naming it
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"--model {spec}: {attr}() raised {type(e).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model {spec}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load a state dict into ``model``, or into its ``net`` (the factory's models wrap the net in
    ``Normalize``; weights of the bare net fit there). One-line errors for unsafe or unfit files."""
    try:
        state = load_state_dict_safely(path)
    except ValueError as e:  # only a pickled object is a safety refusal; NaN or a damaged file say so themselves
        if "Unsupported global" not in str(e):
            raise
        detail = next(ln for ln in str(e).splitlines() if "Unsupported global" in ln)
        raise ValueError(f"--weights {path} cannot be loaded safely with weights_only=True ({detail.strip()})") from None
    net = getattr(model, "net", None)
    # the factory's models wrap the net in Normalize: weights of the bare net fit there
    target = net if isinstance(net, nn.Module) and not set(state) & set(model.state_dict()) else model
    load_fitting(target, state, f"--weights {path} do not fit {what}")


def load_model(spec: str, weights: str | None, num_classes: int, in_channels: int) -> nn.Module:
    """The model named by ``--model`` (in eval mode), with ``--weights`` loaded when given."""
    if is_callable_spec(spec):
        model = from_callable(spec)
    else:
        model = build_model(spec, num_classes=num_classes, in_channels=in_channels)
    if weights is not None:
        load_weights(model, weights, f"model {spec!r}")
    return model.eval()
