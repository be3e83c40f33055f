"""Every value validator of the options (attacks, smoothing, defenses, evaluation): one-line errors
that name the option.

Each returns the value converted to its plain Python type (``bool``, ``int``, ``float``), so a
caller stores what was checked. Numbers: Python and numpy scalars (``numbers.Real``; numpy
integers are ``numbers.Integral``); booleans are never numbers. Flags: ``bool`` and
``numpy.bool_`` only: a string such as ``'no'`` or ``'false'`` is refused (``bool('no')`` is
True), and so is 0/1 (an int where a flag belongs is a misplaced option more often than a flag).
"""
from __future__ import annotations

import functools
import math
import numbers
import re
from typing import Any, Sequence

import numpy as np


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_flag(name: str, value: Any) -> bool:
    """A boolean option: ``bool`` or ``numpy.bool_``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be true or false, got {_kind(value)}")
    return bool(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_count(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """An iteration-like count (steps, restarts, candidates): an integer >= ``minimum`` (and <= ``maximum``)."""
    if not _is_integer(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A random seed: any integer."""
    if not _is_integer(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_number(name: str, value: Any) -> float:
    """A finite real number."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {_kind(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """A finite real number > 0 (or >= 0 with ``allow_zero``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {_kind(value)}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}")
    return float(value)


@functools.lru_cache(maxsize=None)
def _interval(spec: str) -> tuple[bool, float, float, bool]:
    m = re.fullmatch(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*", spec)
    if m is None:
        raise ValueError(f"bad interval {spec!r}: write it as '(0, 1]', '[1, inf)'")
    return m.group(1) == "[", float(m.group(2)), float(m.group(3)), m.group(4) == "]"


def check_range(name: str, value: Any, interval: str) -> float:
    """A finite real number in ``interval``, written as in mathematics: ``"(0, 1]"``, ``"[1, inf)"``."""
    closed_lo, lo, hi, closed_hi = _interval(interval)
    x = check_number(name, value)
    if not ((x >= lo if closed_lo else x > lo) and (x <= hi if closed_hi else x < hi)):
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return x


def check_fraction(name: str, value: Any) -> float:
    """A rate, a momentum, a fraction: in (0, 1]."""
    return check_range(name, value, "(0, 1]")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """One of a few names."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_odd_size(name: str, value: Any, allow_zero: bool = False, minimum: int = 1) -> int:
    """A kernel size with a centre: an odd integer >= ``minimum`` (or 0 = off, with ``allow_zero``)."""
    if not _is_integer(value) or not (value == 0 and allow_zero or value >= minimum and value % 2 == 1):
        off = "0 (off) or " if allow_zero else ""
        raise ValueError(f"{name} must be {off}an odd integer >= {minimum}, got {value!r}")
    return int(value)


def check_budget(eps: Any, norm: str, name: str = "eps") -> float:
    """An Lp budget in pixel space [0, 1]: > 0 and finite; in Linf also < 1, since a ball of
    radius >= 1 holds the whole box [0, 1]^d (no budget at all). An L2 budget's ceiling depends
    on the image size (``check_budget_fits``)."""
    eps = check_positive(name, eps)
    if norm == "linf" and eps >= 1.0:
        raise ValueError(f"{name} (Linf budget) must be < 1, got {eps}: a ball of radius >= 1 holds every "
                         "image in [0, 1] (no budget)")
    return eps


def check_budget_fits(eps: float, norm: str, pixels: int, name: str = "eps") -> None:
    """An L2 budget >= sqrt(pixels) or an L1 budget >= pixels (the box's diameter) constrains nothing."""
    if norm == "l2" and eps >= math.sqrt(pixels):
        raise ValueError(f"{name} (L2 budget) must be < sqrt({pixels}) = {math.sqrt(pixels):.4g} for these "
                         f"images, got {eps}: the ball holds every image in [0, 1] (no budget)")
    if norm == "l1" and eps >= pixels:
        raise ValueError(f"{name} (L1 budget) must be < {pixels} (the number of values) for these images, "
                         f"got {eps}: the ball holds every image in [0, 1] (no budget)")
