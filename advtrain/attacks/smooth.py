"""qPGD2: PGD2 with the gradient smoothed like the input, the 'quick and dirty' integration (thesis eq. 4.8)."""
from __future__ import annotations

from torch import Tensor

from ..smoothing import LaplacianSmoother, check_smoothing_options
from .base import AttackContext
from .gradient import PGDL2
from ..ops.norms import normalize_l2
from .registry import register_attack


@register_attack("qpgd_l2")
class QuickPGDL2(PGDL2):
    """qPGD2: y <- proj_{B_2[x; eps]}(y - alpha n(s-hat_alpha(grad J(y)))) (thesis eq. 4.8 with eq. 2.15-2.16).

    PGD2's loop, with each gradient passed through the normalized smoothing guided by the clean
    image x before normalisation. Smoothing options as sC&W: ``smooth_alpha`` (None: 0.95 up to
    32x32 pixels, 0.997 above), ``solver`` ("auto", "dense", "cg"), ``cg_steps`` (50), ``graph``.
    """

    def __init__(self, eps: float = 2.0, steps: int = 20, alpha: float | None = None,
                 random_start: bool = False, smooth_alpha: float | None = None, solver: str = "auto",
                 cg_steps: int = 50, graph: dict | None = None, **kw) -> None:
        super().__init__(eps=eps, steps=steps, alpha=alpha, random_start=random_start, **kw)
        check_smoothing_options(smooth_alpha, solver, cg_steps, {} if graph is None else graph,
                                what=f"{self.name}: graph")
        self.smooth_alpha, self.solver, self.cg_steps = smooth_alpha, solver, int(cg_steps)
        self.graph = dict(graph or {})
        self._smoother: LaplacianSmoother | None = None

    def _run(self, ctx: AttackContext) -> Tensor:
        self._smoother = LaplacianSmoother(ctx.x, self.smooth_alpha, self.solver, self.cg_steps, **self.graph)
        try:
            return super()._run(ctx)
        finally:
            self._smoother = None

    def _step(self, g: Tensor) -> Tensor:
        return normalize_l2(self._smoother(g))
