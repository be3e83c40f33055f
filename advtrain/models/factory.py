"""Model factory by name: ``c4``, ``lenet``, ``cifar_cnn``, ``timm:<name>``, ``torchvision:<name>``.

Every model is wrapped with :class:`Normalize` so it takes pixels in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..io.fingerprint import check_finite_state
from .nets import C4, MLP, CifarCNN, LeNet
from .normalize import NormalizedModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: built-in nets: name -> (constructor, default in_channels, default mean, default std)
BUILTIN: dict[str, tuple[Callable[..., nn.Module], int, tuple, tuple]] = {
    "c4": (C4, 1, (0.0,), (1.0,)),
    "lenet": (LeNet, 1, (0.0,), (1.0,)),
    "cifar_cnn": (CifarCNN, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mlp": (MLP, 1, (0.0,), (1.0,)),
}
PREFIXES = ("timm:", "torchvision:")


def known_models() -> list[str]:
    return sorted(BUILTIN) + [p + "<name>" for p in PREFIXES]


def load_state_dict_safely(path: str | Path) -> dict:
    """Load a weights file with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty, text, pickled objects: one line, no traceback
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln),  # a pickled object
                      " ".join(f"{type(e).__name__}: {e}".split())[:200])
        raise ValueError(f"weights file {path} is not a readable weights file ({detail})") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} holds no state_dict (a mapping of names to tensors)")
    check_finite_state(obj, f"weights file {path}")
    return obj


def state_mismatch(module: nn.Module, state: dict) -> str:
    """Why ``state`` does not fit ``module``, in one line: the first tensor of another shape (both
    shapes), then how many are missing or unexpected (the first of each)."""
    own = module.state_dict()
    parts = [f"tensor {k!r} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)][:1]
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the model missing from the file (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) of the file not in the model (first {unexpected[0]!r})")
    return "; ".join(parts) or "the tensors do not fit"


def load_fitting(module: nn.Module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)``; a mismatch is one ``ValueError`` line: ``what``, then why."""
    try:
        module.load_state_dict(state)
    except RuntimeError:
        raise ValueError(f"{what}: {state_mismatch(module, state)}") from None


def _load_weights(net: nn.Module, weights: str | Path) -> None:
    """``net.load_state_dict`` of a weights file; a mismatch is one line naming the file."""
    load_fitting(net, load_state_dict_safely(weights), f"weights file {weights} does not fit {type(net).__name__}")


def _timm(name: str, num_classes: int, pretrained: bool, weights: str | None) -> tuple[nn.Module, tuple, tuple]:
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
    kwargs: dict = {"num_classes": num_classes}
    if weights:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        net = timm.create_model(name, pretrained=pretrained or bool(weights), **kwargs)
    except Exception as e:  # offline without cached weights
        if pretrained:
            raise RuntimeError(
                f"could not load pretrained weights for timm:{name} ({type(e).__name__}: {e}). "
                "This machine may be offline: put the weights in the Hugging Face cache "
                "(HF_HUB_OFFLINE=1) or pass weights=/path/to/file") from None
        raise
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return net, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def _torchvision(name: str, num_classes: int, pretrained: bool, weights: str | None) -> tuple[nn.Module, tuple, tuple]:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        raise ValueError(f"unknown torchvision model {name!r}; known: {', '.join(sorted(available))}")
    if weights:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        _load_weights(net, weights)
    elif pretrained:
        try:
            net = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as e:
            raise RuntimeError(
                f"could not load pretrained weights for torchvision:{name} ({type(e).__name__}: {e}). "
                "This machine may be offline: place the file in $TORCH_HOME/hub/checkpoints "
                "or pass weights=/path/to/file") from None
        if num_classes != 1000:
            _replace_head(net, num_classes)
    else:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return net, IMAGENET_MEAN, IMAGENET_STD


def _replace_head(net: nn.Module, num_classes: int) -> None:
    for attr in ("fc", "classifier", "head"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Linear(head.in_features, num_classes))
            return
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            head[-1] = nn.Linear(head[-1].in_features, num_classes)
            return
    raise ValueError(f"cannot find a linear head to resize on {type(net).__name__}")


def build_model(name: str = "c4", num_classes: int = 10, pretrained: bool = False,
                weights: str | None = None, in_channels: int | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> NormalizedModel:
    """Build a classifier taking [0, 1] pixels: ``Normalize(mean, std)`` then the net.

    Args:
        name: ``c4``, ``lenet``, ``cifar_cnn``, ``timm:<name>`` or ``torchvision:<name>``.
        pretrained: load the library's pretrained weights (must be available offline).
        weights: path to a weights file (loaded with ``weights_only=True``).
        mean, std: normalisation; defaults per model.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name in BUILTIN:
        ctor, default_c, m, s = BUILTIN[name]
        if pretrained:
            raise ValueError(f"{name!r} has no pretrained weights; train it or pass weights=PATH")
        net = ctor(num_classes=num_classes, in_channels=in_channels or default_c)
        if weights:
            _load_weights(net, weights)
    elif name.startswith("timm:"):
        net, m, s = _timm(name[5:], num_classes, pretrained, weights)
    elif name.startswith("torchvision:"):
        net, m, s = _torchvision(name[12:], num_classes, pretrained, weights)
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(known_models())}")
    if mean is None and in_channels and len(m) != in_channels:
        m, s = (m[0],) * in_channels, (s[0],) * in_channels
    return NormalizedModel(net, mean if mean is not None else m, std if std is not None else s)
