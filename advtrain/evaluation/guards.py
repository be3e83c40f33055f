"""Checks run before any attack: the run's options, the model, the images and the output folder.

One place for the command line, YAML suites and the Python API alike, so a bad setting is one
clear line up front instead of a traceback (or a stored error) after earlier attacks ran.
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.base import check_logits
from ..ops.checks import check_count, check_positive
from ..defenses.defended import ATTACK_VIEWS
from ..io.fingerprint import check_finite_state
from ..models.normalize import Normalize

QUANTIZE_CHOICES = {"both": ("unquantized", "quantized"), "no": ("unquantized",), "yes": ("quantized",)}


def _choice(name: str, value: Any, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_run_options(*, n: int | None, d_upp: float | None, quantize: str, view: str, batch_size: int,
                      seed: int, points: int) -> None:
    """Types and ranges of ``run_suite``'s (and evaluate.py's) settings."""
    _choice("quantize", quantize, QUANTIZE_CHOICES)
    _choice("view", view, ATTACK_VIEWS)
    if n is not None:
        check_count("n (test images)", n)
    if d_upp is not None:
        check_positive("d_upp", d_upp)
    check_count("batch_size", batch_size)
    check_count("points", points)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")


def check_model(model: Any) -> None:
    """A ``torch.nn.Module`` with finite weights (NaN weights would make every attack 'fail')."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}; wrap a plain function "
                        "in a module whose forward calls it")
    check_finite_state(model.state_dict(), "model")


def check_output_dir(out_dir: str | Path) -> Path:
    """``out_dir`` is (or can be made) a writable folder: checked before the first attack runs."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test.{os.getpid()}"  # one per process (torchrun ranks check at once)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output folder {out} is not writable ({e.strerror or type(e).__name__})") from None
    return out


def as_labels(y: Any) -> Tensor:
    """Labels as an integer tensor (a list of ints is converted; anything else is refused)."""
    if isinstance(y, (list, tuple)):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"labels must be integers, got a {type(y).__name__} of {type(y[0]).__name__}") from None
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        what = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"labels must be a 1-D integer tensor (class indices), got {what}")
    return y


def check_images(x: Any, where: str = "images") -> None:
    """Images: a floating NCHW tensor of pixels in [0, 1] with no NaN."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        what = f"{x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{where} must be a floating-point tensor of pixels in [0, 1], got {what}")
    if x.dim() != 4:
        raise ValueError(f"{where} must be a batch NCHW (4-D), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where} contain NaN or Inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (divide by 255?)" if hi > 1.0 else ""
        raise ValueError(f"{where} must be pixels in [0, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}; "
                         "move normalisation inside the model")


def check_channels(model: nn.Module, x: Tensor) -> None:
    """A per-channel ``Normalize`` of the model matches the images' channels (1-channel images into an RGB
    model would broadcast through it to 3 channels and be evaluated silently)."""

    for name, m in model.named_modules():
        if isinstance(m, Normalize) and m.mean.shape[1] not in (1, x.shape[1]):
            raise ValueError(f"the model normalizes {m.mean.shape[1]}-channel images ({name or 'normalize'}) but the "
                             f"images have {x.shape[1]} channel(s): evaluate it on a dataset of its channels")


def check_attacks_on(specs: list, attack_model: nn.Module, x: Tensor) -> None:
    """What each attack of the suite needs of the model (its layers, fitted files, classes), through the
    attacks' ``check_model(model, logits)``: one line before any attack runs, not a crash after others ran."""
    with torch.no_grad():
        logits = attack_model(x)
    for s in specs:
        check = getattr(s.build(s.runs()[0]), "check_model", None)
        if check is None:
            continue
        try:
            check(attack_model, logits)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
            raise type(e)(f"{s.label}: {e}") from None


def check_model_on(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """The model takes these images and returns logits [B, classes] covering the labels."""
    weights = [p for p in list(model.parameters()) + list(model.buffers()) if p.is_floating_point()]
    if weights and weights[0].dtype != x.dtype:
        raise TypeError(f"the images are {x.dtype} but the model's weights are {weights[0].dtype}: convert one "
                        f"(model.to({x.dtype}) or images.to({weights[0].dtype}))")
    if weights and weights[0].device != x.device:
        raise ValueError(f"the images are on {x.device} but the model is on {weights[0].device}")
    check_channels(model, x)
    with torch.no_grad():
        try:
            out = model(x)
        except RuntimeError as e:  # a shape the model cannot take (RGB into a 1-channel net, another size)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"the model fails on images of shape {tuple(x.shape[1:])}: {first}") from None
    if not isinstance(out, Tensor):
        raise TypeError(f"the model must return a logits tensor [B, classes], got {type(out).__name__}; "
                        "wrap it to return the logits only")
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return logits of shape [{x.shape[0]}, classes], got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the model returns NaN or Inf logits on clean images")
    check_logits(out)
    if int(y.min()) < 0 or int(y.max()) >= out.shape[1]:
        raise ValueError(f"labels must lie in [0, {out.shape[1]}) (the model's classes), "
                         f"got min {int(y.min())}, max {int(y.max())}")
