"""LaplacianSmoother: the normalized smoothing s-hat_alpha guided by x_o (thesis eq. 4.4-4.5)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops.checks import check_choice, check_count
from ..registry import check_kwargs, valid_options
from .graph import ImageGraph, check_graph_options, image_graph
from .laplacian import check_alpha
from .solvers import DENSE_MAX_PIXELS, CGSolver, direct_solver

SOLVERS = ("auto", "dense", "cg")


class _Solve(torch.autograd.Function):
    """r = L_alpha^{-1} z; L_alpha^{-1} is linear and symmetric, so the backward pass is the
    same smoothing of the incoming gradient (thesis eq. 4.15), not AD through CG iterations."""

    @staticmethod
    def forward(ctx, z: Tensor, solve) -> Tensor:  # type: ignore[override]
        ctx.solve = solve
        return solve(z)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.solve(grad), None


def default_alpha(height: int, width: int) -> float:
    """Thesis 4.4.1: alpha = 0.95 on MNIST-size images (dense), 0.997 on ImageNet-size (CG)."""
    return 0.95 if height * width <= DENSE_MAX_PIXELS else 0.997


def check_smoothing_options(alpha: float | None, solver: str, cg_steps: int, graph: dict | None = None,
                            what: str = "graph") -> None:
    """Validate the options shared by the smoother and the smooth attacks (qPGD2, sC&W), ``graph``
    (``image_graph``'s options) included: an unknown or renamed name is refused as the registries
    refuse one (``iters`` was renamed to ``cg_steps``)."""
    if alpha is not None:
        check_alpha(alpha)
    check_choice("solver", solver, SOLVERS)
    check_count("cg_steps (CG iterations)", cg_steps)
    if graph is not None:
        if not isinstance(graph, dict):
            raise TypeError(f"graph must be a dict of image_graph options, got {type(graph).__name__}")
        check_kwargs(image_graph, graph, what, valid=[*valid_options(LaplacianSmoother)[1:],
                                                      *valid_options(image_graph)[1:]])
        check_graph_options(**graph)


class LaplacianSmoother:
    """s-hat_alpha(z) = diag(s_alpha(1_n))^{-1} L_alpha^{-1} z, guided by ``x_o`` (eq. 4.4-4.5).

    Args:
        x_o: guide images [B, d, H, W] in [0, 1]; each image gets its own graph (eq. 4.1).
        alpha: smoothing strength in [0, 1); 0 is the identity; None: ``default_alpha`` by size.
        solver: "dense" (direct: banded Cholesky on CPU, pre-computed inverse on other devices),
            "cg" (matrix-free conjugate gradient) or "auto"
            (dense up to ``DENSE_MAX_PIXELS`` pixels, CG above).
        cg_steps: CG iterations (fixed count, thesis 4.4.1: 50).
        **graph_options: ``feature_kernel``, ``sigma_f``, ``sigma_s``, ``neighbours`` of ``image_graph``.

    Calling it on z [B, C, H, W] (any C; every channel is smoothed on the same graph) returns
    s-hat_alpha(z), differentiable in z through a custom backward.
    """

    def __init__(self, x_o: Tensor, alpha: float | None = 0.95, solver: str = "auto", cg_steps: int = 50,
                 **graph_options) -> None:
        check_smoothing_options(alpha, solver, cg_steps, graph_options, what="LaplacianSmoother")
        self.graph: ImageGraph = image_graph(x_o, **graph_options)
        b, h, w = self.graph.shape
        alpha = default_alpha(h, w) if alpha is None else alpha
        if solver == "auto":
            solver = "dense" if h * w <= DENSE_MAX_PIXELS else "cg"
        self.alpha, self.solver_name = float(alpha), solver
        self._solve = direct_solver(self.graph, alpha) if solver == "dense" else CGSolver(self.graph, alpha, cg_steps)
        with torch.no_grad():
            ones = torch.ones(b, 1, h, w, dtype=x_o.dtype, device=x_o.device)
            self.row_sums = self._solve(ones)  # s_alpha(1_n), [B, 1, H, W], positive

    def smooth(self, z: Tensor) -> Tensor:
        """s_alpha(z) = L_alpha^{-1} z (eq. 4.4), without the normalisation."""
        self._check(z)
        return _Solve.apply(z, self._solve)

    def __call__(self, z: Tensor) -> Tensor:
        """s-hat_alpha(z) (eq. 4.5): every row of the filter sums to one."""
        return self.smooth(z) / self.row_sums

    def smoothness(self, r: Tensor) -> Tensor:
        """Per-sample r^T (I - W_norm) r / ||r||^2 on the guide's graph (lower is smoother)."""
        self._check(r)
        return self.graph.smoothness(r)

    def _check(self, z: Tensor) -> None:
        b, h, w = self.graph.shape
        if z.dim() != 4 or z.shape[0] != b or z.shape[-2:] != (h, w):
            raise ValueError(f"signal must be [B={b}, C, {h}, {w}] like the guide x_o, got {tuple(z.shape)}")
