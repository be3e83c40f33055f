"""The defense registry: ``build_defense(name, **options)``."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Registry

DEFENSES: Registry[nn.Module] = Registry("defense")
register_defense = DEFENSES.register


def build_defense(name: str, **options: Any) -> nn.Module:
    """Build a defense by registry name; unknown names/options fail listing the valid ones."""
    return DEFENSES.build(name, **options)
