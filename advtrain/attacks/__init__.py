"""Attack library in pixel space [0, 1]. See ``base.py`` for the shared protocol.

Every module in this package is imported, so an attack registers itself with ``@register_attack``.
"""
from ..autoload import import_submodules
from .base import Attack, AttackContext, AttackResult, BestTracker, Family
from .registry import ATTACKS, build_attack, register_attack

import_submodules(__name__)

__all__ = ["Attack", "AttackContext", "AttackResult", "BestTracker", "Family", "ATTACKS", "build_attack",
           "register_attack"]
