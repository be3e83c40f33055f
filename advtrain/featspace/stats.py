"""D2B's per-neuron activation statistics ("neuron_gaussian", FEATURE_ATTACKS.md 1.2 step 2, 1.4).

One pass over the training split accumulates, per neuron (every (c, h, w) of a throttle plane),
sum a and sum a^2 in float64; mean mu = E[a], std sigma = sqrt(E[a^2] - mu^2). Saved as
safetensors keyed by plane name, with the weights hash of the network they were fitted on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..nn.layers import LayerTap, find_layers
from ..nn.state import frozen_eval
from ..io.artifacts import check_bound_to, load_artifact, save_artifact
from ..io.fingerprint import weights_tag

KIND = "d2b-activation-stats"


def default_planes(model: nn.Module, count: int = 2) -> list[str]:
    """The first ``count`` convolutions' outputs (pre-activation): C4's ``net.features.0``, ``.2``."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: pass the D2B planes (layers) by name")
    return convs[:count]


@dataclass
class ActivationStats:
    """Per-neuron mean and std of each plane (tensors shaped like one sample's feature map)."""

    mean: dict[str, Tensor]
    std: dict[str, Tensor]
    count: int
    model_hash: str

    @property
    def layers(self) -> list[str]:
        return list(self.mean)

    def save(self, path: str | Path) -> Path:
        tensors = {f"{k}/mean": v for k, v in self.mean.items()} | {f"{k}/std": v for k, v in self.std.items()}
        return save_artifact(path, tensors, KIND, {"layers": self.layers, "count": self.count,
                                                    "model_hash": self.model_hash})

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "ActivationStats":
        """Load; with ``model``, refuse statistics fitted on another network."""
        tensors, meta = load_artifact(path, KIND)
        if model is not None:
            check_bound_to(meta, model, "activation statistics", path)
        layers = meta.get("layers")
        if not isinstance(layers, list) or any(f"{k}/{s}" not in tensors for k in layers for s in ("mean", "std")):
            raise ValueError(f"{path}: activation statistics without the mean and std of every plane they name")
        for k in layers:
            if bool((tensors[f"{k}/std"] < 0).any()):
                raise ValueError(f"{path}: plane {k!r} has a negative std (a std is >= 0): the file was modified; "
                                 "refit it (python -m advtrain.featspace stats)")
            if tensors[f"{k}/std"].shape != tensors[f"{k}/mean"].shape:
                raise ValueError(f"{path}: plane {k!r} has a std of another shape than its mean: refit it")
        if not isinstance(meta.get("count"), int) or meta["count"] < 1:
            raise ValueError(f"{path}: activation statistics over {meta.get('count')!r} images: refit them")
        return cls({k: tensors[f"{k}/mean"] for k in layers}, {k: tensors[f"{k}/std"] for k in layers},
                   int(meta["count"]), meta["model_hash"])


def fit_activation_stats(model: nn.Module, batches: Iterable, layers: Sequence[str] | None = None,
                         progress: bool = True) -> ActivationStats:
    """One streaming pass over ``batches`` (``(x, y)`` or ``x``) with float64 sums per neuron."""

    layers = list(layers) if layers is not None else default_planes(model)
    find_layers(model, layers)
    s1: dict[str, Tensor] = {}
    s2: dict[str, Tensor] = {}
    count = 0
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="activation statistics", unit="batch")
    with frozen_eval(model), torch.no_grad(), LayerTap(model, layers) as tap:
        for batch in it:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            for k in layers:
                a = tap[k].double()
                s1[k] = s1.get(k, 0) + a.sum(0)
                s2[k] = s2.get(k, 0) + (a * a).sum(0)
            count += x.shape[0]
    if count < 1:
        raise ValueError("activation statistics need at least one image, got none")
    mean = {k: s1[k] / count for k in layers}
    std = {k: (s2[k] / count - mean[k] ** 2).clamp_min(0).sqrt() for k in layers}
    return ActivationStats({k: v.float() for k, v in mean.items()}, {k: v.float() for k, v in std.items()},
                           count, weights_tag(model))
