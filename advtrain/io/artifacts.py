"""Safetensors files bound to a network: a content hash of its weights is stored in the file's
metadata and checked on load, so statistics or a decoder are never used with another network."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .files import atomic_write
from .fingerprint import CHECKSUM, check_checksum, check_finite_state, same_weights, weights_sha256, weights_tag


def save_artifact(path: str | Path, tensors: dict[str, Tensor], kind: str, meta: dict[str, Any]) -> Path:
    """Write ``tensors`` with ``{"kind": kind, **meta}`` (JSON-encoded values) as metadata, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"kind": kind, CHECKSUM: weights_sha256(tensors), **{k: json.dumps(v) for k, v in meta.items()}}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_artifact(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of a file written by :func:`save_artifact` for ``kind``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise ValueError(f"{path} is not a safetensors file ({type(e).__name__})") from None
    if raw.get("kind") != kind:
        raise ValueError(f"{path} holds {raw.get('kind', 'no advtrain artifact')!r}, not {kind!r}")
    check_finite_state(tensors, f"{kind} file {path}")
    check_checksum(tensors, raw.get(CHECKSUM), f"{kind} file {path}")
    return tensors, {k: json.loads(v) for k, v in raw.items() if k not in ("kind", CHECKSUM)}


def check_bound_to(meta: dict[str, Any], model: nn.Module, what: str, path: str | Path) -> None:
    """Refuse a file fitted on another network (its stored weights hash differs)."""
    if not same_weights(meta.get("model_hash"), model):
        raise ValueError(f"{what} {path} were fitted on another model (weights hash {meta.get('model_hash')}, "
                         f"this model {weights_tag(model)}): refit them for this model")
