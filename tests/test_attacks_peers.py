"""Agreement with independent implementations (torchattacks, foolbox) on the trained C4.

Deterministic settings (no random start); same model, inputs, eps and step sizes.
"""
from __future__ import annotations

import pytest
import torch

from advtrain.attacks import build_attack


@pytest.fixture(scope="module")
def batch(correct_test_batch):
    return correct_test_batch[0][:100], correct_test_batch[1][:100]


def success_rate(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) != y).float().mean())


@pytest.mark.parametrize("ours, theirs, options", [
    ("fgsm", "FGSM", {"eps": 0.15}),
    ("pgd_linf", "PGD", {"eps": 0.1, "alpha": 0.02, "steps": 10}),
    ("pgd_l2", "PGDL2", {"eps": 1.5, "alpha": 0.3, "steps": 10}),
])
def test_success_rate_matches_torchattacks(ours, theirs, options, trained_c4, batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    kw = dict(options)
    if ours != "fgsm":
        kw["random_start"] = False
    res = build_attack(ours, **kw)(trained_c4, x, y)
    peer = getattr(torchattacks, theirs)(trained_c4, **kw)(x, y)
    ours_rate, peer_rate = float(res.success.float().mean()), success_rate(trained_c4, peer, y)
    assert 0.05 < peer_rate < 0.95, "eps should give an informative success rate"
    assert abs(ours_rate - peer_rate) <= 0.01, (ours_rate, peer_rate)


def test_ddn_matches_foolbox(trained_c4, batch):
    fb = pytest.importorskip("foolbox")
    x, y = batch[0][:48], batch[1][:48]
    res = build_attack("ddn", steps=30)(trained_c4, x, y)
    _, peer, peer_success = fb.attacks.DDNAttack(steps=30)(fb.PyTorchModel(trained_c4, bounds=(0, 1)),
                                                           x, y, epsilons=None)
    peer_l2 = (peer - x).flatten(1).norm(dim=1)
    ours_mean, peer_mean = float(res.l2[res.success].mean()), float(peer_l2[peer_success].mean())
    assert abs(ours_mean - peer_mean) <= 0.1 * peer_mean, (ours_mean, peer_mean)
    assert abs(float(res.success.float().mean()) - float(peer_success.float().mean())) <= 0.05


def test_deepfool_matches_foolbox(trained_c4, batch):
    fb = pytest.importorskip("foolbox")
    x, y = batch[0][:10], batch[1][:10]
    # foolbox counts the (correctly predicted) true class among its candidates, we do not
    res = build_attack("deepfool", steps=50, candidates=3, overshoot=0.02)(trained_c4, x, y)
    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=4, overshoot=0.02)
    _, peer, peer_success = attack(fb.PyTorchModel(trained_c4, bounds=(0, 1)), x, y, epsilons=None)
    assert torch.equal(res.success, peer_success)
    torch.testing.assert_close(res.l2, (peer - x).flatten(1).norm(dim=1), rtol=1e-3, atol=1e-4)
