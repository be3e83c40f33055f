"""What a model *is*, as opposed to where it was loaded from: a content hash of its weights, and
the refusal of non-finite (corrupted) tensors at load time."""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch
from torch import Tensor, nn


def weights_sha256(module: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and values), hex.

    Two models of one architecture with different weights differ here; results and codebooks
    are bound to this hash, not to a file path.
    """
    state = module.state_dict() if isinstance(module, nn.Module) else module
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_tag(module: nn.Module | Mapping[str, Tensor]) -> str:
    """The first 16 hex digits of :func:`weights_sha256`: the weights hash stored in files and file names."""
    return weights_sha256(module)[:16]


def legacy_weights_tags(model: nn.Module) -> set[str]:
    """The 16-digit weights hashes written before 2026-12-06 (D2B statistics, FSA encoders: names,
    dtypes, shapes and values of parameters and buffers, no separators), accepted on load so that
    files fitted then stay usable; nothing writes them any more."""
    h = hashlib.sha256()
    for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return {h.hexdigest()[:16]}


def same_weights(stored: object, model: nn.Module) -> bool:
    """Whether a stored weights hash (:func:`weights_tag`, or the earlier format) is ``model``'s."""
    return isinstance(stored, str) and (stored == weights_tag(model) or stored in legacy_weights_tags(model))


def check_finite_state(state: Mapping[str, Tensor], where: str) -> None:
    """Refuse NaN/Inf in any floating tensor of ``state`` (a damaged file trains to ``loss=nan``
    and evaluates to a meaningless P_suc of 0): one line naming the first bad tensor."""
    for name, t in state.items():
        if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{where}: tensor {name!r} has {bad} non-finite (NaN/Inf) values of {t.numel()}: "
                             "the file is corrupted or the training diverged")


#: the safetensors metadata key of a file's content hash (``weights_sha256`` of its tensors), written at save
CHECKSUM = "content_sha256"


def check_checksum(tensors: Mapping[str, Tensor], stored: str | None, where: str) -> None:
    """Refuse a file whose tensors do not hash to the checksum stored when it was written (edited or
    damaged after writing), or that has none (written by an older advtrain: refit it)."""
    if stored is None:
        raise ValueError(f"{where} has no content checksum (written by an older advtrain or by hand): refit it")
    if weights_sha256(tensors) != stored:
        raise ValueError(f"{where} does not match the content checksum stored when it was written: the file was "
                         "modified or damaged; refit it")
