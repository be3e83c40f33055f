"""BPDA is wired (thesis 6.6, Table 6.4): against bit-depth reduction and median smoothing the
attack through BPDA succeeds on >= 99% of the images, the same attack without it is weaker."""
import pytest

from advtrain.defenses import build_defense
from advtrain.defenses.defended import Defended
from advtrain.evaluation import run_suite

N = 32
PGD2 = [{"attack": "pgd_l2", "options": {"steps": 20, "early_stop": True}, "budgets": [2.0, 6.0]}]


def evaluate(model, defense, dm, view):
    res = run_suite(Defended(model, defense), dm.test_dataloader(), PGD2, n=N, view=view, quantize="no",
                    progress=False)
    return res, res["attacks"]["pgd_l2"]["unquantized"]


def test_bpda_breaks_bit_depth_which_masks_gradients_without_it(trained_c4, mnist_dm):
    res, bpda = evaluate(trained_c4, build_defense("bit_depth", bits=3), mnist_dm, "bpda")
    assert bpda["p_suc"] >= 0.99
    assert res["context"]["bpda_approximated"] == ["bit_depth"]
    res_direct, direct = evaluate(trained_c4, build_defense("bit_depth", bits=3), mnist_dm, "direct")
    assert direct["p_suc"] <= 0.1  # zero gradients everywhere: the attack is blind
    assert res_direct["attacks"]["pgd_l2"]["zero_grad_rate"] == 1.0
    assert any("gradient is exactly zero" in w for w in res_direct["warnings"])
    assert res_direct["context"]["bpda_approximated"] == []


def test_bpda_against_median_smoothing_beats_the_attack_unaware_of_it(trained_c4, mnist_dm):
    res, bpda = evaluate(trained_c4, build_defense("median", size=2), mnist_dm, "bpda")
    assert bpda["p_suc"] >= 0.99 and res["context"]["bpda_approximated"] == ["median"]
    _, blind = evaluate(trained_c4, build_defense("median", size=2), mnist_dm, "blackbox")
    # crafted on the bare C4, scored on the defended one (thesis Table 6.2 column)
    assert blind["p_suc"] <= bpda["p_suc"] - 0.05
    assert blind["p_upp"] <= bpda["p_upp"] - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("defense", [("bit_depth", {"bits": 5}), ("median", {"size": 3}),
                                     ("pixel_deflection", {"deflections": 50, "window": 3})])
def test_bpda_against_the_other_baselines(trained_c4, mnist_dm, defense):
    _, bpda = evaluate(trained_c4, build_defense(defense[0], **defense[1]), mnist_dm, "bpda")
    assert bpda["p_suc"] >= 0.95
