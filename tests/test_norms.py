import torch

from advtrain.ops.norms import box_free, clip_box, l2_norm, normalize_l2, project_l2, project_linf, quantize


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
