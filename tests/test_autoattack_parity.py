"""Parity with the original AutoAttack per image (issue 20): every image that ``pyautoattack``'s standard
version breaks within the budget is broken by the ``reliable`` suite's attacks of that norm, quantized
and not (AutoAttack's images rounded into the ball the same way: ``norms.quantize_within``). The set,
not the rate.

AutoAttack's per-image results are anchors (``tests/anchors/autoattack_standard.json``, written by
``bench/autoattack_anchors.py``, one thread: ~900 s per CIFAR budget), so the tests run only our suite.
The cheapest checks the Madry LeNet5 at Linf 0.3 on the digits AutoAttack broke (the inclusion is
per image, so those are the images that can fail it); it and the full sets are ``slow``. In L1 (MNIST's
budget 10) the default test runs the suite's FAB-T on the digits only AutoAttack's FAB-T broke; the full
set is ``slow`` and compared by a paired sign test (``evaluation.metrics.sign_test_p``).

Known gap (issue 20, measured 2026-12-03 on the first 100 digits): quantized, AutoAttack's image of
digit 69 rounded into the Linf 0.3 ball is adversarial and none of the suite's is (unquantized the
suite breaks all 8 that AutoAttack breaks). So the tests assert the unquantized inclusion;
``bench/evaluation_strength.py`` prints both. Closing it (APGD's quantization-aware mode inside the
ball for the quantized variant) is open work.
"""
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from advtrain.evaluation import load_suite, run_suite
from advtrain.evaluation.metrics import sign_test_p
from advtrain.evaluation.threats import broken_images
from advtrain.ops.norms import within_budget

ANCHORS = Path(__file__).parent / "anchors" / "autoattack_standard.json"


def anchor(key: str) -> dict:
    anchors = json.loads(ANCHORS.read_text()) if ANCHORS.is_file() else {}
    if key not in anchors:
        pytest.skip(f"no AutoAttack anchor {key!r}: run bench/autoattack_anchors.py --only {key}")
    return anchors[key]


def digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from advtrain.data import build_datamodule
    dm = build_datamodule("mnist_embedded", batch_size=100, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(n)])
    return torch.stack(xs), torch.tensor(ys)


def ours(model, x, y, dataset: str, norm: str, eps: float) -> dict[str, set[int]]:
    """Per variant, the images (indices into x) the reliable suite's attacks of ``norm`` break within eps."""
    torch.manual_seed(0)
    res = run_suite(model, DataLoader(TensorDataset(x, y), batch_size=len(y)), "reliable", dataset=dataset,
                    threats=norm, budgets={norm: eps}, n=len(y), batch_size=len(y), progress=False)
    return {v: broken_images(res, norm, v) for v in ("unquantized", "quantized")}


def assert_superset(found: dict[str, set[int]], aa: dict, images: list[int],
                    variants: tuple[str, ...] = ("unquantized",)) -> None:
    """AutoAttack's broken images (of ``images``, positions in the anchor) are all in ``found``."""
    keys = {"unquantized": "broken", "quantized": "broken_quantized"}
    for v, key in ((v, keys[v]) for v in variants):
        theirs = {images.index(i) for i in images if aa[key][i]}
        missed = sorted(images[j] for j in theirs - found[v])
        assert not missed, f"{v}: AutoAttack breaks images {missed} that the reliable suite does not"


@pytest.mark.slow  # 141 s at load 17 on 2 cores (~25 s quiet): above the default run's few seconds
def test_lenet5_linf_breaks_every_image_autoattack_breaks(madry_lenet5):
    """Madry LeNet5 at Linf 0.3 (AutoAttack standard breaks 8 of the first 100 digits, one a clean
    error): our Linf ensemble on exactly those digits breaks each of them."""
    aa = anchor("lenet5_linf_0.3")
    hit = [i for i in range(aa["n"]) if aa["broken"][i]]
    x, y = digits(aa["n"])
    assert_superset(ours(madry_lenet5, x[hit], y[hit], "mnist_embedded", "linf", 0.3), aa, hit)


@pytest.mark.slow
@pytest.mark.parametrize("key,norm", [("lenet5_linf_0.3", "linf"), ("lenet5_l2_2", "l2")])
def test_lenet5_full_set(madry_lenet5, key, norm):
    aa = anchor(key)
    x, y = digits(aa["n"])
    found = ours(madry_lenet5, x, y, "mnist_embedded", norm, aa["eps"])
    assert_superset(found, aa, list(range(aa["n"])))
    assert 1 - len(found["unquantized"]) / aa["n"] <= aa["robust_accuracy"]  # no higher than AutoAttack's


def test_lenet5_l1_fab_t_breaks_the_digits_only_fab_t_breaks_in_autoattack(madry_lenet5):
    """Madry LeNet5 at MNIST's L1 budget 10 (AutoAttack standard in L1 breaks 99 of the first 100 digits:
    APGD-CE 93, FAB-T 5 more, one clean error). AutoAttack's APGD stops on the ball's sphere (L1 = 10);
    the digits it broke strictly inside are FAB-T's minimal adversarials, those an APGD-only L1
    ensemble leaves (measured: 5 of the 6 it misses). The reliable suite's FAB-T in L1 (its settings,
    unquantized) breaks each within the budget: 900 gradients on 5 digits, ~20 s on one thread."""
    aa = anchor("lenet5_l1_10")
    hit = [i for i in range(aa["n"]) if aa["broken"][i] and 0 < aa["distortion"][i] < 0.999 * aa["eps"]]
    assert len(hit) == 5
    x, y = digits(aa["n"])
    spec = next(s for s in load_suite("reliable", "mnist_embedded") if s.label == "fab_t_l1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a loaded 2-core machine: 10x slower
    try:
        res = spec.build()(madry_lenet5, x[hit], y[hit])
    finally:
        torch.set_num_threads(n)
    l1 = (res.x_adv - x[hit]).flatten(1).abs().sum(1)
    assert bool((res.success & within_budget(l1, aa["eps"])).all()), (res.success.tolist(), l1.tolist())


@pytest.mark.slow  # 216 s on one thread (FAB-T in L1 on every digit: 9 targets x 100 steps)
def test_lenet5_l1_full_set(madry_lenet5):
    """All 100 digits at L1 10. Measured 2026-12-04: the same 99 broken unquantized (quantized 98 each,
    one digit apart either way). Paired sign test (``sign_test_p``) on the images exactly one side
    breaks, both variants: fails when AutoAttack's lead is below chance 1e-3 if equally strong."""
    aa = anchor("lenet5_l1_10")
    x, y = digits(aa["n"])
    found = ours(madry_lenet5, x, y, "mnist_embedded", "l1", aa["eps"])
    for v, key in (("unquantized", "broken"), ("quantized", "broken_quantized")):
        theirs = {i for i in range(aa["n"]) if aa[key][i]}
        b, c = len(theirs - found[v]), len(found[v] - theirs)
        assert sign_test_p(b, c) >= 1e-3, f"{v}: AutoAttack alone breaks {sorted(theirs - found[v])} (ours alone {c})"


@pytest.mark.slow
@pytest.mark.parametrize("key,norm", [("resnet18_linf_1", "linf"), ("resnet18_linf_0.5", "linf"),
                                      ("resnet18_l2_0.1", "l2"), ("resnet18_l1_2", "l1")])
def test_resnet18_cifar10(aa_resnet18, key, norm):
    """AutoAttack's CIFAR-10 ResNet-18 on (the first N of) foolbox's 20 samples at budgets where
    AutoAttack leaves images unbroken (the model is naturally trained)."""
    from advtrain.models.peer_weights import foolbox_cifar10_samples
    aa = anchor(key)
    x, y = foolbox_cifar10_samples()
    found = ours(aa_resnet18, x[:aa["n"]], y[:aa["n"]], "cifar10", norm, aa["eps"])
    assert_superset(found, aa, list(range(aa["n"])))
