"""The attack registry: ``build_attack(name, **options)``."""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import Attack

#: the registry sets each class's ``name`` to the name it is registered by (the one results carry)
ATTACKS: Registry[Attack] = Registry("attack", sets_name=True)
register_attack = ATTACKS.register


def build_attack(name: str, **options: Any) -> Attack:
    """Build an attack by registry name; unknown names/options fail listing the valid ones."""
    return ATTACKS.build(name, **options)
