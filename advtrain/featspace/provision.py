"""Fit-on-first-use for suite entries of feature-space attacks: a ``d2b`` entry without ``stats`` or
an ``fsa`` entry without ``encoder``/``decoder`` gets files fitted on the dataset's training split
and cached in ``cache_dir`` (beside the evaluated checkpoint); later runs reuse them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import decoder, fitting
from ..io.fingerprint import legacy_weights_tags, weights_tag
from .stats import fit_activation_stats


def provision(attack: str, options: dict[str, Any], model: nn.Module, dataset: str,
              cache_dir: str | Path) -> dict[str, Any]:
    """``options`` with the missing artifact paths filled in (files fitted when absent)."""
    cache_dir = Path(cache_dir)
    if attack == "d2b" and options.get("stats") is None:
        layers = options.get("layers")
        suffix = "" if layers is None else "_" + "-".join([layers] if isinstance(layers, str) else layers)
        # this model's file, or one fitted before the weights hash changed (2026-12-06), else fitted now
        names = [weights_tag(model), *sorted(legacy_weights_tags(model))]
        found = [cache_dir / f"d2b_stats_{t}{suffix}.safetensors" for t in names]
        path = next((f for f in found if f.is_file()), found[0])
        if not path.is_file():
            fit_activation_stats(model, fitting.train_split(dataset).train_dataloader(), layers).save(path)
        return {**options, "stats": str(path)}
    if attack == "fsa" and (options.get("encoder") is None or options.get("decoder") is None):
        enc, dec = cache_dir / "fsa_encoder.safetensors", cache_dir / "fsa_decoder.safetensors"
        if not enc.is_file():
            fitting.train_encoder(enc, dataset)
        if not dec.is_file():
            ds = fitting.train_split(dataset).train_set
            xs, ys = zip(*[ds[i] for i in range(len(ds))])
            decoder.fit_style_decoder(enc, dec, torch.stack(xs), torch.tensor(ys))
        return {**options, "encoder": str(enc), "decoder": str(dec)}
    return options
