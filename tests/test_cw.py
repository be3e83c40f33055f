"""C&W L2 (thesis eq. 2.18-2.19), sC&W (eq. 4.14) and qPGD2 (eq. 4.8) on the trained C4 (thesis Table 4.1)."""
from __future__ import annotations

import pytest
import torch

from advtrain.attacks import build_attack
from advtrain.attacks.cw import CarliniWagnerL2
from advtrain.ops.norms import l2_norm
from advtrain.smoothing import LaplacianSmoother
from rates import rate_floor

N = 24  # images of the correctly classified test batch attacked here
#: measured success on the N images (C4 trained with seeds 0 / 1 / 2, see rates.py): C&W 5x20
#: 23/24 on all three; qPGD2 eps 3, 10 steps: 22 / 23 / 22 of 24 (thesis Table 4.1: C&W P_suc 1.00)
CW_SUCCESS, QPGD_SUCCESS = 23 / 24, 22 / 24


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread for this module


@pytest.fixture(scope="module")
def xy(correct_test_batch):
    return correct_test_batch[0][:N], correct_test_batch[1][:N]


class SpyCW(CarliniWagnerL2):
    """C&W recording the L2 and success of every iterate offered to the tracker."""

    def _track(self, ctx, best, x_adv, logits):
        adv = super()._track(ctx, best, x_adv, logits)
        self.seen.append((l2_norm((x_adv - ctx.x).detach()), adv))
        return adv


@pytest.fixture(scope="module")
def results(trained_c4, xy):
    """The thesis' MNIST settings "5x20" (5.3.1) for C&W and sC&W, plus FGSM eps = 0.3 (4.4.1)."""
    x, y = xy
    spy = SpyCW()
    spy.seen = []
    out = {"cw_l2": spy(trained_c4, x, y), "spy": spy}
    for name, opts in (("scw_l2", {}), ("fgsm", {"eps": 0.3})):
        out[name] = build_attack(name, **opts)(trained_c4, x, y)
    return out


def test_cw_returns_the_successful_iterate_of_least_l2(results):
    res, seen = results["cw_l2"], results["spy"].seen
    assert res.grads == 5 * 20
    l2 = torch.stack([s[0] for s in seen])  # [iterates, N]
    adv = torch.stack([s[1] for s in seen])
    least = torch.where(adv, l2, torch.inf).amin(0)
    assert torch.equal(res.success, adv.any(0))
    torch.testing.assert_close(res.l2[res.success], least[res.success], rtol=1e-5, atol=1e-6)
    # 0.9 (at most 2 failures of 24) failed with p ~ 0.08 on another training; the binomial floor: 0.83
    assert float(res.success.float().mean()) >= rate_floor(CW_SUCCESS, N)


def test_cw_beats_fgsm_distortion(results):
    cw, fgsm = results["cw_l2"], results["fgsm"]
    both = cw.success & fgsm.success
    assert int(both.sum()) >= N // 2
    assert float(cw.l2[both].mean()) < 0.6 * float(fgsm.l2[both].mean())


def test_scw_is_smoother_than_cw(results, xy):
    """Graph quadratic form r^T (I - W_norm) r / ||r||^2 on the input's graph (thesis 4.2)."""
    x = xy[0]
    graph = LaplacianSmoother(x, 0.95)
    smooth = {n: graph.smoothness(results[n].x_adv - x)[results[n].success].mean() for n in ("cw_l2", "scw_l2")}
    assert float(smooth["scw_l2"]) < 0.6 * float(smooth["cw_l2"])


def test_scw_distortion_at_most_cw_at_similar_success(results):
    """Thesis Table 4.1 (C4 on MNIST): C&W P_suc 1.00, D 2.49; sC&W P_suc 1.00, D 1.97."""
    cw, scw = results["cw_l2"], results["scw_l2"]
    p_cw, p_scw = (float(r.success.float().mean()) for r in (cw, scw))
    assert p_scw >= rate_floor(p_cw, N)  # "similar": within the binomial spread of 24 images (0.12), not 1 image
    assert float(scw.l2[scw.success].mean()) <= float(cw.l2[cw.success].mean())


def test_qpgd_is_smoother_than_pgd(trained_c4, xy):
    x, y = xy
    graph = LaplacianSmoother(x, 0.95)
    res = {n: build_attack(n, eps=3.0, steps=10)(trained_c4, x, y) for n in ("pgd_l2", "qpgd_l2")}
    assert float(res["qpgd_l2"].success.float().mean()) >= rate_floor(QPGD_SUCCESS, N)  # 0.75
    smooth = {n: graph.smoothness(r.x_adv - x).mean() for n, r in res.items()}
    assert float(smooth["qpgd_l2"]) < 0.6 * float(smooth["pgd_l2"])
    assert float(res["qpgd_l2"].l2.max()) <= 3.0 + 1e-5


def test_one_by_hundred_setting(trained_c4, xy):
    """Thesis 5.3.1 "1x100" (eta 0.1, c 10) is expressible; grads count every Adam step."""
    x, y = xy[0][:6], xy[1][:6]
    res = build_attack("cw_l2", search_steps=1, steps=30, lr=0.1, initial_const=10.0)(trained_c4, x, y)
    assert res.grads == 30 and bool(res.success.any())


@pytest.mark.parametrize("name, options, message", [
    ("cw_l2", {"steps": 0}, "steps"), ("cw_l2", {"search_steps": 0}, "search_steps"),
    ("cw_l2", {"lr": 0.0}, "lr"), ("cw_l2", {"initial_const": -1.0}, "initial_const"),
    ("cw_l2", {"confidence": -1.0}, "confidence"),
    ("scw_l2", {"smooth_alpha": 1.0}, "alpha"), ("scw_l2", {"solver": "lu"}, "solver"),
    ("scw_l2", {"cg_steps": 0}, "iterations"), ("qpgd_l2", {"smooth_alpha": -0.5}, "alpha"),
])
def test_bad_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_attack(name, **options)
