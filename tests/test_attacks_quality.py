"""Attack quality on the trained C4 with quantization: the ordering of thesis Table 5.2."""
from __future__ import annotations

import pytest
import torch

from advtrain.attacks import build_attack
from advtrain.evaluation.metrics import least_distortion


@pytest.fixture(scope="module")
def bp_ddn_20(trained_c4, correct_test_batch):
    """BP and DDN at 20 iterations, quantized, on the correctly classified test images."""
    x, y = correct_test_batch
    return {name: build_attack(name, steps=20, quantize=True)(trained_c4, x, y) for name in ("bp", "ddn")}


def test_bp20_succeeds_on_almost_every_image(bp_ddn_20):
    bp = bp_ddn_20["bp"]
    assert bp.grads == 20
    assert float(bp.success.float().mean()) >= 0.99


def test_bp20_less_distortion_than_ddn20_on_common_successes(bp_ddn_20):
    """Compared image by image where both succeed, BP-20 has the lower mean L2."""
    bp, ddn = bp_ddn_20["bp"], bp_ddn_20["ddn"]
    both = bp.success & ddn.success
    assert int(both.sum()) >= 0.9 * len(both)
    assert float(bp.l2[both].mean()) < float(ddn.l2[both].mean())


@pytest.mark.xfail(strict=True, reason="measured DDN-20 success 0.96 on this C4 (thesis Table 5.2, "
                                       "MNIST: DDN-20 P_suc 0.82); DDN needs ~100 steps to reach 1.0")
def test_ddn20_succeeds_on_almost_every_image(bp_ddn_20):
    assert float(bp_ddn_20["ddn"].success.float().mean()) >= 0.99


@pytest.mark.xfail(strict=True, reason="measured mean L2 over each attack's own successes: BP-20 1.31, "
                                       "DDN-20 1.26; DDN's mean leaves out its 4% failures, the hardest "
                                       "images (thesis Table 5.2, MNIST: BP-20 1.45 > DDN-20 1.40)")
def test_bp20_mean_l2_below_ddn20_over_own_successes(bp_ddn_20):
    bp, ddn = bp_ddn_20["bp"], bp_ddn_20["ddn"]
    assert float(bp.l2[bp.success].mean()) < float(ddn.l2[ddn.success].mean())


def sweep(model, x, y, name: str, budgets: list[float], **options) -> torch.Tensor:
    """Mean over images of the least L2 of a successful output over an eps sweep (thesis 3.3.2)."""
    runs = [build_attack(name, eps=eps, quantize=True, **options)(model, x, y) for eps in budgets]
    success, dist = least_distortion(torch.stack([r.success for r in runs]), torch.stack([r.l2 for r in runs]))
    assert float(success.float().mean()) >= 0.9, f"{name} fails on most images over the sweep"
    return dist[success].mean()


def test_distortion_ordering_fgsm_ifgsm_pgd2(trained_c4, correct_test_batch):
    """Least successful L2 over an eps sweep: FGSM > I-FGSM > PGD2 (thesis Table 5.2 ordering)."""
    x, y = correct_test_batch[0][:48], correct_test_batch[1][:48]
    fgsm = sweep(trained_c4, x, y, "fgsm", [0.1, 0.2, 0.3, 0.4])
    ifgsm = sweep(trained_c4, x, y, "ifgsm", [0.1, 0.2, 0.3], steps=20, early_stop=True)
    pgd2 = sweep(trained_c4, x, y, "pgd_l2", [1.0, 2.0, 3.0], steps=20, early_stop=True)
    assert fgsm > ifgsm > pgd2  # measured on 48 images: 3.53 > 2.86 > 1.56
