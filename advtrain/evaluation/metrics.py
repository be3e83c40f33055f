"""The evaluation statistics of thesis 3.3.2, written once: P_suc, D-bar, P(D), P_upp (eq. 3.1-3.2).

Inputs are per-image tensors over the set X of correctly classified images: ``success`` (bool) and
``distortion`` (the least distortion of a successful adversarial; ignored where success is False).
:class:`DistortionStats` accumulates them over batches (and processes) as a torchmetrics ``Metric``
whose ``compute`` is :func:`summarize`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


@dataclass
class AttackStats:
    """Global statistics of one attack over X (thesis eq. 3.1-3.2)."""

    n: int            # |X|, images classified correctly without attack
    n_suc: int        # |X_suc|
    p_suc: float      # N_suc / N
    d_bar: float      # mean distortion over successes (nan when no success)
    d_median: float   # median distortion over successes (nan when no success)
    d_max: float      # max distortion over successes (0 when no success)
    p_upp: float      # P(D_upp)
    d_upp: float

    def as_dict(self) -> dict:
        return asdict(self)


def _check(success: Tensor, distortion: Tensor) -> tuple[Tensor, Tensor]:
    success = success.detach().flatten().bool().cpu()
    distortion = distortion.detach().flatten().double().cpu()
    if success.shape != distortion.shape:
        raise ValueError(f"success and distortion must have the same length, got "
                         f"{success.numel()} and {distortion.numel()}")
    if bool(torch.isnan(distortion[success]).any()):
        raise ValueError("distortion of a successful image is NaN")
    return success, distortion


def operating_characteristic(success: Tensor, distortion: Tensor, grid: Tensor) -> Tensor:
    """P(D) = |{x in X_suc : D(x) <= D}| / N at each D of ``grid`` (thesis eq. 3.2).

    Non-decreasing in D, P(0) = 0 for nonzero distortions, P(D_max) = P_suc.
    """
    success, distortion = _check(success, distortion)
    n = success.numel()
    if n == 0:
        return torch.zeros(len(grid), dtype=torch.float64)
    d = torch.sort(distortion[success]).values
    counts = torch.searchsorted(d, grid.detach().double().cpu().contiguous(), right=True)
    return counts.double() / n


def attack_stats(success: Tensor, distortion: Tensor, d_upp: float) -> AttackStats:
    """P_suc, D-bar (eq. 3.1), the median and max distortion, and P_upp = P(D_upp) (eq. 3.2)."""
    success, distortion = _check(success, distortion)
    n = success.numel()
    d = distortion[success]
    n_suc = int(d.numel())
    p_upp = float(operating_characteristic(success, distortion, torch.tensor([d_upp]))[0]) if n else 0.0
    return AttackStats(
        n=n, n_suc=n_suc, p_suc=n_suc / n if n else 0.0,
        d_bar=float(d.mean()) if n_suc else float("nan"),
        d_median=float(d.median()) if n_suc else float("nan"),
        d_max=float(d.max()) if n_suc else 0.0,
        p_upp=p_upp, d_upp=float(d_upp))


def distortion_grid(d_max: float, points: int = 200) -> Tensor:
    """A fine grid on [0, d_max] for plotting P(D)."""
    return torch.linspace(0.0, max(float(d_max), 1e-6), points, dtype=torch.float64)


def least_distortion(success_runs: Tensor, distortion_runs: Tensor) -> tuple[Tensor, Tensor]:
    """Combine several runs (e.g. an eps sweep, or an attack suite) per image: success if any run
    succeeded, distortion = the least over successful runs (thesis 3.3.2).

    Args: ``[runs, N]`` tensors. Returns ``(success [N], distortion [N])`` (inf where failed).
    """
    inf = torch.full_like(distortion_runs, float("inf"), dtype=torch.float64)
    d = torch.where(success_runs.bool(), distortion_runs.double(), inf)
    best = d.min(dim=0).values
    return torch.isfinite(best), best


def sign_test_p(only_a: int, only_b: int) -> float:
    """A paired comparison of two attacks on the same images: P(X >= only_a), X ~ Binomial(only_a +
    only_b, 1/2), the chance that attack A alone breaks at least ``only_a`` of the images exactly one of
    them breaks if both were equally strong (each such image a fair coin; a one-sided sign test)."""
    n = only_a + only_b
    return sum(math.comb(n, k) for k in range(only_a, n + 1)) / 2 ** n if n else 1.0


def per_sample_distortion(stats: dict, norm: str = "l2") -> tuple[Tensor, Tensor]:
    """``(success, distortion)`` from a results entry's ``per_sample[norm]`` (None = failed, inf)."""
    d = torch.tensor([float("inf") if v is None else v for v in stats["per_sample"][norm]], dtype=torch.float64)
    return torch.isfinite(d), d


def summarize(success: Tensor, distortion: Tensor, d_upp: float, points: int = 200) -> dict:
    """``attack_stats`` plus the operating characteristic P(D) on a ``points`` grid up to D_max."""
    stats = attack_stats(success, distortion, d_upp)
    grid = distortion_grid(stats.d_max, points)
    curve = operating_characteristic(success, distortion, grid)
    return {**stats.as_dict(), "curve": {"d": grid.tolist(), "p": curve.tolist()}}


class DistortionStats(Metric):
    """:func:`summarize` over every ``update`` of a split: P_suc, D-bar, median, P_upp and P(D).

    States are the per-image ``success`` and ``distortion`` tensors (``dist_reduce_fx="cat"``), so under
    DDP ``compute`` sees every process' images (torchmetrics syncs them) and the statistics are those of
    the whole split. A process that saw no image must still ``update`` with empty tensors before a sync.
    ``last_values`` keeps the (synced) tensors of the last ``compute`` (for the robustness-curve callback).
    """

    full_state_update = False

    def __init__(self, d_upp: float, points: int = 200, **kwargs) -> None:
        super().__init__(**kwargs)
        if not d_upp > 0:
            raise ValueError(f"d_upp must be > 0, got {d_upp}")
        self.d_upp, self.points = float(d_upp), int(points)
        self.add_state("success", default=[], dist_reduce_fx="cat")
        self.add_state("distortion", default=[], dist_reduce_fx="cat")
        self.last_values: tuple[Tensor, Tensor] | None = None

    def update(self, success: Tensor, distortion: Tensor) -> None:
        """One batch: ``success`` (bool) and ``distortion`` per image of X (same length)."""
        if success.numel() != distortion.numel():
            raise ValueError(f"success and distortion must have the same length, got "
                             f"{success.numel()} and {distortion.numel()}")
        self.success.append(success.detach().flatten().bool())
        self.distortion.append(distortion.detach().flatten().double())

    def compute(self) -> dict:
        success = dim_zero_cat(self.success) if len(self.success) else torch.zeros(0, dtype=torch.bool)
        distortion = dim_zero_cat(self.distortion) if len(self.distortion) else torch.zeros(0, dtype=torch.float64)
        self.last_values = (success.bool().cpu(), distortion.cpu())
        return summarize(*self.last_values, self.d_upp, self.points)
