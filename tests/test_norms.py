import pytest
import torch

from advtrain.ops.norms import (box_free, clip_box, l1_norm, l2_norm, normalize_l2, project_l1, project_l2, project_linf,
                                quantize, within_budget)


def test_normalize_gives_unit_directions_even_for_vanishing_gradients():
    g = torch.randn(4, 3, 8, 8)
    g[1] *= 1e-20  # cross-entropy gradient of a very confident model
    g[2] *= 1e-36  # squares underflow in float32
    g[3] = 0.0
    n = l2_norm(normalize_l2(g))
    torch.testing.assert_close(n[:3], torch.ones(3))
    assert float(n[3]) == 0.0
    torch.testing.assert_close(normalize_l2(g[:1]), g[:1] / l2_norm(g[:1]))


def test_projections_stay_in_ball_and_box():
    x = torch.rand(5, 1, 6, 6)
    y = x + torch.randn_like(x)
    assert bool((l2_norm(project_l2(y, x, 0.5) - x) <= 0.5 + 1e-5).all())
    p = project_linf(y, x, torch.full((5,), 0.1))
    assert float((p - x).abs().max()) <= 0.1 + 1e-6 and 0 <= float(p.min()) and float(p.max()) <= 1
    q = quantize(torch.rand(100))
    torch.testing.assert_close(q * 255, torch.round(q * 255))


def test_iteration_counts_are_checked_once_for_every_attack():
    import pytest

    from advtrain.attacks import build_attack

    for name, option in [("bp", "steps"), ("bp", "line_search_steps"), ("ddn", "steps"), ("pgd_l2", "steps"),
                         ("deepfool", "candidates"), ("cw_l2", "search_steps")]:
        with pytest.raises(ValueError, match=f"{option} must be an integer >= 1, got 0"):
            build_attack(name, **{option: 0})
        with pytest.raises(ValueError, match=f"{option} must be an integer >= 1, got 2.5"):
            build_attack(name, **{option: 2.5})


def test_box_free_keeps_exactly_the_components_clipping_would_not_cancel():
    y = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.5, 0.5]])
    d = torch.tensor([[-1.0, 1.0, 1.0, -1.0, -1.0, 1.0]])
    free = box_free(d, y)
    assert free.tolist() == [[0.0, 1.0, 0.0, -1.0, -1.0, 1.0]]
    # a small step along the free direction is not shortened by clipping; along d it is
    assert torch.equal(clip_box(y + 0.1 * free), y + 0.1 * free)
    assert l2_norm(clip_box(y + 0.1 * d) - y) < l2_norm(0.1 * d)


# ---------------------------------------------------------------- the L1-ball-and-box projection

def _project_l1_bisection(v, x, eps, rounds: int = 200):
    """Reference (another algorithm than the sorting of ``project_l1``): the KKT form
    d_i = sign(v_i) clamp(|v_i| - lam, 0, b_i), lam by bisection on ||d(lam)||_1 = eps, float64."""
    v, x = (v - x).double().flatten(1), x.double().flatten(1)
    b = torch.where(v >= 0, 1 - x, x)
    d = lambda lam: torch.sign(v) * torch.minimum((v.abs() - lam[:, None]).clamp_min(0), b)  # noqa: E731
    lo, hi = torch.zeros(len(v), dtype=torch.float64), v.abs().amax(1)
    for _ in range(rounds):
        mid = (lo + hi) / 2
        over = d(mid).abs().sum(1) > eps
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    lam = torch.where(d(torch.zeros_like(lo)).abs().sum(1) > eps, hi, torch.zeros_like(hi))
    return x + d(lam)


def _small_l1_case(seed: int, n: int = 64, shape=(1, 2, 3)):
    """Small images with pixels on the box's faces (0 and 1), points far outside and inside the ball."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g, dtype=torch.float64)
    x[x < 0.2], x[x > 0.85] = 0.0, 1.0
    v = x + torch.randn(n, *shape, generator=g, dtype=torch.float64) * torch.rand(n, 1, 1, 1, generator=g, dtype=torch.float64)
    return x, v


@pytest.mark.parametrize("eps", [0.05, 0.5, 2.0, 5.0])
def test_l1_projection_is_exact_against_a_bisection_reference(eps):
    x, v = _small_l1_case(0)
    p = project_l1(v, x, eps)
    torch.testing.assert_close(p.flatten(1), _project_l1_bisection(v, x, eps), rtol=0, atol=1e-9)
    assert bool(within_budget(l1_norm(p - x), eps).all()) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_l1_projection_is_the_nearest_point_of_ball_and_box_and_idempotent():
    """No feasible point is nearer (random feasible points, and convex combinations with p); a
    point of the ball and box is its own projection; projecting twice changes nothing."""
    x, v = _small_l1_case(1)
    eps = 1.0
    p = project_l1(v, x, eps)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        z = project_l1(x + torch.randn(x.shape, generator=g, dtype=x.dtype), x, eps)  # feasible
        for t in (1.0, 0.1, 0.01):
            q = p + t * (z - p)
            assert bool(((q - v).flatten(1).norm(dim=1) >= (p - v).flatten(1).norm(dim=1) - 1e-12).all())
    torch.testing.assert_close(project_l1(p, x, eps), p, rtol=0, atol=1e-12)
    inside = x + 0.1 * (p - x)
    torch.testing.assert_close(project_l1(inside, x, eps), inside, rtol=0, atol=1e-12)


def test_l1_projection_float32_per_sample_budgets_and_pyautoattack():
    """float32 images: the budget holds after the cast; eps per sample; and AutoAttack's own
    projection (``L1_projection``, a bisection over sorted breakpoints) gives the same point, up to its
    float32 cumulative sums over 6,144 breakpoints (3e-5 measured; ours is float64: the reference's)."""
    g = torch.Generator().manual_seed(3)
    x = torch.round(torch.rand(8, 3, 32, 32, generator=g) * 255) / 255
    v = x + torch.randn(x.shape, generator=g)
    eps = torch.tensor([0.5, 1, 2, 4, 8, 12, 50, 1e4])
    p = project_l1(v, x, eps)
    assert p.dtype == torch.float32 and bool((l1_norm(p - x) <= eps * (1 + 1e-5)).all())
    torch.testing.assert_close(p[-1], v[-1].clamp(0, 1))  # a budget larger than the box: the box only
    aa = pytest.importorskip("pyautoattack.autopgd_base")
    for i, e in enumerate(eps[:-1].tolist()):
        ref = v[i:i + 1] + aa.L1_projection(x[i:i + 1], v[i:i + 1] - x[i:i + 1], e)
        torch.testing.assert_close(p[i:i + 1], ref.clamp(0, 1), rtol=0, atol=1e-4)
        torch.testing.assert_close(p[i:i + 1].double().flatten(1), _project_l1_bisection(v[i:i + 1], x[i:i + 1], e),
                                   rtol=0, atol=1e-6)
