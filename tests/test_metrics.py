import math

import pytest
import torch

from advtrain.evaluation.metrics import attack_stats, distortion_grid, least_distortion, operating_characteristic


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
