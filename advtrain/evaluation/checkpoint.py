"""Load a train.py (Lightning) checkpoint safely (``weights_only=True``: no arbitrary unpickling)."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import build_model
from ..models.factory import load_fitting
from ..io.fingerprint import check_finite_state

PREFIX = "model."  # AdversarialTrainingModule keeps the classifier in ``self.model``


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Returns (classifier in eval mode, the module's hyper_parameters, the datamodule's).

    The classifier is rebuilt from ``hyper_parameters`` (``model``, ``num_classes``) with the model
    factory, then given the checkpoint's weights.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    if "model" not in hp:
        raise ValueError(f"{path}: hyper_parameters has no 'model' name; was it written by train.py?")
    model = build_model(hp["model"], num_classes=int(hp.get("num_classes", 10)))
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    load_fitting(model, state, f"{path}: weights do not fit model {hp['model']!r}")
    return model.eval(), hp, dict(ckpt.get("datamodule_hyper_parameters") or {})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, refused in one line when the file is missing, not a torch.save
    archive (empty, truncated, text), unsafe to unpickle, a plain state_dict, or has NaN/Inf weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a checkpoint (not a torch.save archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        detail = next((ln for ln in str(e).splitlines() if "Unsupported global" in ln), type(e).__name__)
        raise ValueError(f"{path} cannot be loaded safely with weights_only=True ({detail.strip()})") from None
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} is not a train.py (Lightning) checkpoint but a plain state_dict (weights only, "
                         "no 'hyper_parameters' naming the model)")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not a train.py (Lightning) checkpoint: it needs 'state_dict' and "
                         "'hyper_parameters'")
    if not isinstance(ckpt["state_dict"], dict) or not isinstance(ckpt["hyper_parameters"], dict):
        raise ValueError(f"{path}: 'state_dict' and 'hyper_parameters' must be mappings")
    check_finite_state(ckpt["state_dict"], str(path))
    return ckpt
