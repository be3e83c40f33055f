"""The defense registry: ``build_defense(name, **options)``."""
from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np
from torch import nn

from ..registry import Registry

DEFENSES: Registry[nn.Module] = Registry("defense")
register_defense = DEFENSES.register


def build_defense(name: str, **options: Any) -> nn.Module:
    """Build a defense by registry name; unknown names/options fail listing the valid ones, an option
    of another type than its default's (``size='abc'``) fails naming it."""
    factory = DEFENSES[name]
    check_option_types(factory, options, f"defense {name!r}")
    return DEFENSES.build(name, **options)


_KINDS = ((bool, (bool, np.bool_), "true or false"), (int, (numbers.Integral,), "an integer"),
          (float, (numbers.Real,), "a number"))


def check_option_types(factory: Any, options: dict[str, Any], what: str) -> None:
    """Each option given the type of its default in ``factory``'s signature (bool, int or float; numpy's bool
    is a bool, a numpy integer an integer, an integer a number; a default of None leaves the option free)."""
    params = inspect.signature(factory).parameters
    for key, value in options.items():
        default = params[key].default if key in params else None
        for kind, accepted, words in _KINDS:
            if type(default) is kind:
                if not isinstance(value, accepted) or (kind is not bool and isinstance(value, (bool, np.bool_))):
                    raise TypeError(f"{what}: option {key!r} must be {words}, got {type(value).__name__} {value!r}")
                break
