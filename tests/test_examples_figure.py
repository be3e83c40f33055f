"""examples.png (issue 15): no saturated panel from a scaling fault, true and adversarial labels, the
easiest, hardest and unbroken images."""
import torch

from advtrain.evaluation.examples import EASIEST, HARDEST, UNBROKEN, Adversarials
from advtrain.evaluation.magnify import magnify
from advtrain.evaluation.report import perturbation_panel, plot_examples


def saturated(img: torch.Tensor) -> float:
    return float(((img <= 0) | (img >= 1)).float().mean())


def blocky(seed: int = 0) -> torch.Tensor:
    """A 2-bit image of flat blocks with sharp edges (as some embedded MNIST digits): the bilateral
    filter's narrow range kernel leaves it unchanged, so its own magnification is 0 everywhere."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 4, (1, 1, 7, 7), generator=g).float() / 3).repeat_interleave(4, 2).repeat_interleave(4, 3)


def test_magnification_of_a_small_perturbation_on_a_flat_image_is_not_saturated():
    x = blocky()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    x_adv = (x + 0.01 * noise).clamp(0, 1)
    shown = magnify(x, x_adv)
    # the scale is at least the 0.99 quantile of |mag(x_adv)|: at most 1% of the pixels (+ ties) saturate;
    # before the fix the scale came from x alone (0 here) and every pixel was black or white
    assert saturated(shown) <= 0.02
    # nothing to show: mid-grey (to float rounding), no rounding noise scaled up to black and white
    assert torch.allclose(magnify(x, x), torch.full_like(x, 0.5), atol=1e-3)


def test_perturbation_panel_is_linear_in_the_perturbation_and_names_its_factor():
    delta = 1e-3 * torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    panel, title = perturbation_panel(delta)
    k = 0.5 / float(delta.abs().max())
    assert title == f"perturbation x{k:.3g}"
    assert torch.allclose(panel, 0.5 + k * delta)  # only the largest change reaches 0 or 1: nothing clipped
    assert 0 < saturated(panel) <= 2 / delta.numel()
    grey, title = perturbation_panel(torch.zeros(3, 8, 8))
    assert torch.equal(grey, torch.full((3, 8, 8), 0.5)) and title == "zero perturbation"


def test_rows_are_the_easiest_the_hardest_and_unbroken_images(tmp_path):
    n = 14
    x, y = 0.25 + 0.5 * torch.rand(n, 1, 6, 6), torch.arange(n) % 10
    l2 = torch.linspace(0.1, 2.0, n)
    store = Adversarials()
    broken = torch.ones(n, dtype=torch.bool)
    broken[[3, 7, 11]] = False
    delta = 0.01 * torch.randn(n, 1, 6, 6)
    store.offer(torch.arange(n), x, (x + delta), l2, broken, (y + 1) % 10, "fgsm")
    store.offer(torch.arange(n), x, x + 2 * delta, l2 + 1, broken, y, "worse")  # larger L2: not kept
    rows = store.rows(list(range(n)), x, y)
    kinds = [r["kind"] for r in rows]
    assert kinds == ["easiest"] * EASIEST + ["hardest"] * HARDEST + [f"not broken (3 of {n})"] * UNBROKEN
    finite = [k for k in range(n) if broken[k]]
    assert [r["index"] for r in rows] == finite[:EASIEST] + finite[-HARDEST:] + [3, 7]
    for r in rows[:EASIEST + HARDEST]:
        k = r["index"]
        assert r["label"] == int(y[k]) and r["pred"] == (int(y[k]) + 1) % 10 and r["attack"] == "fgsm"
        assert r["l2"] == float(l2[k])
        assert torch.allclose(r["x_adv"], x[k] + delta[k], atol=1e-5)  # float16 display copy
    assert all(r["x_adv"] is None and r["l2"] is None for r in rows[-UNBROKEN:])
    plot_examples(rows, tmp_path / "examples.png")
    assert (tmp_path / "examples.png").stat().st_size > 10_000
