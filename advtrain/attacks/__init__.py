"""Attack library in pixel space [0, 1]. See ``base.py`` for the shared protocol."""
from .base import Attack, AttackContext, AttackResult, BestTracker
from .registry import ATTACKS, build_attack, register_attack
from . import gradient  # noqa: F401  (registers fgsm, ifgsm/bim, pgd_linf, pgd_l2)

__all__ = ["Attack", "AttackContext", "AttackResult", "BestTracker", "ATTACKS", "build_attack", "register_attack"]
