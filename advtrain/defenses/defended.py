"""``Defended(model, *defenses)``: input defenses composed in front of a classifier, and the
models the attacks see (thesis 6.6: BPDA white box; Table 6.2: black box)."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .bpda import bpda

#: who the attacks see: "bpda" (white box, non-differentiable defenses approximated),
#: "direct" (white box, gradients through the defense as is), "blackbox" (the undefended model)
ATTACK_VIEWS = ("bpda", "direct", "blackbox")


def needs_bpda(defense: nn.Module) -> bool:
    """Each defense declares ``needs_bpda: bool``: True when its autograd gradient is not the one to
    attack with (zero, shattered or random, Athalye et al. 2018); undeclared ones get BPDA."""
    if hasattr(defense, "differentiable") and not hasattr(defense, "needs_bpda"):
        raise TypeError(f"defense {defense_name(defense)}: attribute 'differentiable' was renamed to "
                        "'needs_bpda' (its negation)")
    return bool(getattr(defense, "needs_bpda", True))


def defense_name(defense: nn.Module) -> str:
    return getattr(defense, "name", type(defense).__name__)


class Defended(nn.Module):
    """``model(d_k(...d_1(x)))``: the defenses applied in order, then the classifier."""

    def __init__(self, model: nn.Module, *defenses: nn.Module) -> None:
        super().__init__()
        if not defenses:
            raise ValueError("Defended needs at least one defense")
        for d in defenses:
            if not isinstance(d, nn.Module):
                raise TypeError(f"defenses must be nn.Modules, got {type(d).__name__}")
        self.model = model
        self.defenses = nn.ModuleList(defenses)

    def forward(self, x: Tensor) -> Tensor:
        for d in self.defenses:
            x = d(x)
        return self.model(x)

    @property
    def approximated(self) -> list[str]:
        """Names of the defenses an attack goes through with BPDA."""
        return [defense_name(d) for d in self.defenses if needs_bpda(d)]

    def attack_view(self, view: str = "bpda",
                    approx: dict[str, Callable[[Tensor], Tensor]] | None = None) -> nn.Module:
        """The model the attacks differentiate; its forward equals this model's (except blackbox).

        ``approx`` maps a defense name to a differentiable approximation for its BPDA backward.
        """
        if view not in ATTACK_VIEWS:
            raise ValueError(f"unknown attack view {view!r}; valid: {', '.join(ATTACK_VIEWS)}")
        if view == "blackbox":
            return self.model
        if view == "direct":
            return self
        approx = approx or {}
        wrapped = [bpda(d, approx.get(defense_name(d))) if needs_bpda(d) else d for d in self.defenses]
        return Defended(self.model, *wrapped)
