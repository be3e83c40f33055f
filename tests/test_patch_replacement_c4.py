"""Patch replacement on the trained C4 (embedded MNIST): thesis Tables 6.2 and 6.4 in miniature.

An image-layer PQ codebook (3x3 patches, stride 1, K = 128) fitted on the clean training split.
"""
from __future__ import annotations

import pytest
import torch

from advtrain.attacks import build_attack
from advtrain.defenses import build_defense
from advtrain.defenses.defended import Defended
from advtrain.defenses.patch_replacement import PatchReplacement

IMAGE_PQ = [dict(layer="image", a=1, c=1, K=128)]


@pytest.fixture(scope="module")
def defended(trained_c4, mnist_dm):
    torch.manual_seed(0)
    return PatchReplacement(trained_c4, IMAGE_PQ).fit(mnist_dm.train_dataloader(), max_patches=50_000)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_clean_accuracy_drops_by_at_most_5_points(trained_c4, defended, mnist_test_batch):
    x, y = mnist_test_batch
    plain, with_pr = accuracy(trained_c4, x, y), accuracy(defended, x, y)
    assert plain - with_pr <= 0.05, (plain, with_pr)


def test_ddn_that_does_not_see_the_defense_mostly_fails(trained_c4, defended, correct_test_batch):
    """Thesis Table 6.2 (DDN P_suc 1.00 -> 0.08): adversarials of the undefended model, scored on the
    defended one (the black-box view)."""
    x, y = correct_test_batch[0][:100], correct_test_batch[1][:100]
    torch.manual_seed(0)
    res = build_attack("ddn", steps=20)(defended.attack_view("blackbox"), x, y)
    with torch.no_grad():
        still_adv = defended(res.x_adv).argmax(1) != y
    p_plain, p_defended = float(res.success.float().mean()), float((res.success & still_adv).float().mean())
    assert p_plain >= 0.9, p_plain
    assert p_defended <= 0.2, (p_plain, p_defended)


def bpda_ddn(defended_model: Defended, x, y) -> tuple[float, float]:
    """P_suc and mean L2 of successes of DDN-20 through BPDA, scored on the defended model."""
    with torch.no_grad():
        keep = defended_model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    torch.manual_seed(0)
    res = build_attack("ddn", steps=20)(defended_model.attack_view("bpda"), x, y)
    with torch.no_grad():
        success = defended_model(res.x_adv).argmax(1) != y
    return float(success.float().mean()), float(res.l2[success].mean())


def test_bpda_ddn_needs_larger_distortion_than_against_bit_depth_or_median(trained_c4, defended,
                                                                            mnist_test_batch):
    """Thesis Table 6.4: BPDA-DDN's mean distortion is clearly larger against patch replacement."""
    x, y = mnist_test_batch[0][:64], mnist_test_batch[1][:64]
    p_pr, d_pr = bpda_ddn(defended, x, y)
    for name, opts in (("bit_depth", {"bits": 3}), ("median", {"size": 3})):
        p_b, d_b = bpda_ddn(Defended(trained_c4, build_defense(name, **opts)), x, y)
        assert p_b >= p_pr - 0.05, (name, p_b, p_pr)
        assert d_pr >= 1.2 * d_b, (name, d_pr, d_b)
