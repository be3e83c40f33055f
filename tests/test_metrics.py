import math

import pytest
import torch

from advtrain.distributed import dist_info, launch
from advtrain.evaluation.metrics import (DistortionStats, attack_stats, distortion_grid, least_distortion,
                                       operating_characteristic, summarize)


def test_stats_match_hand_computation():
    success = torch.tensor([True, True, False, True])
    dist = torch.tensor([1.0, 3.0, 99.0, 2.0])
    s = attack_stats(success, dist, d_upp=2.0)
    assert s.n == 4 and s.n_suc == 3 and s.p_suc == 0.75
    assert s.d_bar == pytest.approx(2.0) and s.d_max == 3.0 and s.d_median == 2.0
    assert s.p_upp == pytest.approx(0.5)  # images with D <= 2 among N=4


def test_operating_characteristic_is_monotone_and_ends_at_p_suc():
    g = torch.Generator().manual_seed(0)
    success = torch.rand(500, generator=g) < 0.8
    dist = torch.rand(500, generator=g) * 3
    s = attack_stats(success, dist, 1.0)
    p = operating_characteristic(success, dist, distortion_grid(s.d_max))
    assert bool((p[1:] >= p[:-1]).all())
    assert float(p[0]) == 0.0 and float(p[-1]) == pytest.approx(s.p_suc)


def test_no_success_and_bad_input():
    s = attack_stats(torch.zeros(3, dtype=torch.bool), torch.zeros(3), 1.0)
    assert s.p_suc == 0.0 and math.isnan(s.d_bar)
    with pytest.raises(ValueError, match="same length"):
        attack_stats(torch.ones(3, dtype=torch.bool), torch.zeros(2), 1.0)


def test_least_distortion_over_runs():
    succ = torch.tensor([[True, False, False], [True, True, False]])
    dist = torch.tensor([[2.0, 1.0, 1.0], [1.5, 3.0, 0.5]])
    s, d = least_distortion(succ, dist)
    assert s.tolist() == [True, True, False]
    assert d[:2].tolist() == [1.5, 3.0]


def _split(n: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) < 0.7, torch.rand(n, generator=g, dtype=torch.float64) * 3


def test_distortion_stats_over_batches_equal_summarize_on_the_concatenation():
    success, distortion = _split()
    metric = DistortionStats(d_upp=2.0, points=50)
    for lo, hi in ((0, 7), (7, 7), (7, 30), (30, 50)):  # uneven batches, one empty
        metric.update(success[lo:hi], distortion[lo:hi])
    assert metric.compute() == summarize(success, distortion, 2.0, points=50)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute()["n"] == 0  # nothing seen after a reset: no stale images


def _half_per_rank() -> dict:
    rank, world = dist_info()
    success, distortion = _split()
    metric = DistortionStats(d_upp=2.0, points=50)
    metric.update(success[rank::world], distortion[rank::world])
    return metric.compute()  # torchmetrics syncs the cat states over the process group


def test_distortion_stats_sync_over_two_processes():
    """Each of 2 gloo processes sees half the images; the synced statistics are those of all of them
    (the images come back in another order: every statistic is order-free)."""
    success, distortion = _split()
    synced, ref = launch(_half_per_rank, 2), summarize(success, distortion, 2.0, points=50)
    assert synced.pop("d_bar") == pytest.approx(ref.pop("d_bar"), rel=1e-12)  # float64 sum in another order
    assert synced == ref
