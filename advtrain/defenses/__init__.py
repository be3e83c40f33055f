"""Defenses in front of (or inside) a classifier; non-differentiable ones are attacked with BPDA.

Every module in this package is imported, so a defense registers itself with ``@register_defense``.
"""
from ..autoload import import_submodules
from .registry import DEFENSES, build_defense, register_defense

import_submodules(__name__)

from .bpda import bpda  # noqa: E402
from .defended import Defended  # noqa: E402
from .e8 import E8Lattice  # noqa: E402
from .eot import EOT  # noqa: E402
from .patch_replacement import PatchReplacement  # noqa: E402

__all__ = ["DEFENSES", "build_defense", "register_defense", "Defended", "bpda", "E8Lattice", "EOT", "PatchReplacement"]
