"""Graph-Laplacian smoothing (thesis eq. 4.1-4.5), bilateral filter and magnification (thesis 4.5)."""
from __future__ import annotations

import math

import pytest
import torch

from advtrain.evaluation.magnify import adversarial_magnification, magnify
from advtrain.smoothing import LaplacianSmoother, bilateral_filter, default_alpha, image_graph
from advtrain.smoothing.solvers import BandedSolver, DenseSolver

SOLVERS = ["dense", "cg"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread for this module


def rand_image(b=2, c=3, h=7, w=6, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=torch.float64)


def two_regions(h=12, w=12) -> torch.Tensor:
    """Left half black, right half white: a graph cut along the middle."""
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    x[..., w // 2:] = 1.0
    return x


@pytest.mark.parametrize("solver", SOLVERS)
def test_normalized_smoothing_of_ones_is_ones(solver):
    x = rand_image()
    s = LaplacianSmoother(x, alpha=0.9, solver=solver, cg_steps=60)
    ones = torch.ones(2, 4, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(s(ones), ones, atol=1e-8, rtol=0)
    assert float((s.row_sums - 1).abs().min()) > 1e-3, "row sums of L_alpha^-1 are not 1 before eq. 4.5"


@pytest.mark.parametrize("solver", SOLVERS)
def test_alpha_zero_is_identity(solver):
    x, z = rand_image(), rand_image(seed=1)
    torch.testing.assert_close(LaplacianSmoother(x, alpha=0.0, solver=solver)(z), z)


def test_dense_and_cg_agree_on_mnist(mnist_test_batch):
    x = mnist_test_batch[0][:4].double()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = LaplacianSmoother(x, 0.95, solver="dense")(z)
    cg = LaplacianSmoother(x, 0.95, solver="cg", cg_steps=50)(z)
    torch.testing.assert_close(cg, dense, atol=1e-5 * float(dense.abs().max()), rtol=0)
    assert float((dense - z).abs().max()) > 0.1, "smoothing did nothing"


@pytest.mark.parametrize("neighbours", [4, 8])
@pytest.mark.parametrize("hw", [(9, 7), (5, 1), (1, 6)])
def test_banded_cholesky_matches_the_dense_inverse(neighbours, hw):
    """The CPU direct solver (banded, bandwidth W + 1) solves the same systems as the dense inverse."""
    x, z = rand_image(b=3, c=2, h=hw[0], w=hw[1]), rand_image(b=3, c=4, h=hw[0], w=hw[1], seed=5)
    graph = image_graph(x, neighbours=neighbours)
    dense = DenseSolver(graph, 0.95)(z)
    torch.testing.assert_close(BandedSolver(graph, 0.95)(z), dense, rtol=0, atol=1e-12 * float(dense.abs().max()))


def test_smoothing_minimises_eq_4_2():
    """s_alpha(z) = L_alpha^-1 z zeroes the gradient of phi_alpha (eq. 4.2-4.4)."""
    x, z, alpha = rand_image(), rand_image(seed=2), 0.8
    graph = image_graph(x)
    r = LaplacianSmoother(x, alpha, solver="dense").smooth(z).requires_grad_(True)
    smooth_term = (r * (r - graph.adjacency_matvec(r))).sum()  # (1/2) sum w_ij ||r^_i - r^_j||^2
    phi = alpha * smooth_term + (1 - alpha) * (r - z).square().sum()
    (grad,) = torch.autograd.grad(phi, r)
    assert float(grad.abs().max()) < 1e-10


@pytest.mark.parametrize("solver", SOLVERS)
def test_custom_backward_matches_finite_differences(solver):
    x = rand_image(b=1, c=2, h=3, w=4)
    s = LaplacianSmoother(x, alpha=0.9, solver=solver, cg_steps=16)  # CG is exact after n = 12 steps
    z = rand_image(b=1, c=2, h=3, w=4, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(s, (z,))


def test_smoothed_perturbation_does_not_leak_across_region_boundary():
    x = two_regions()
    z = torch.zeros_like(x)
    z[..., :, :6] = torch.randn(1, 1, 12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for solver in SOLVERS:
        s = LaplacianSmoother(x, 0.95, solver=solver)
        r = s(z)
        left, right = r[..., :6], r[..., 6:]
        assert float(right.abs().max()) < 1e-3 * float(left.abs().max()), solver
        assert float(s.smoothness(r)) < 0.5 * float(s.smoothness(z)), "left region not smoothed"
    # control: on a flat image the same perturbation spreads to the right half
    flat = LaplacianSmoother(torch.full_like(x, 0.5), 0.95)(z)
    assert float(flat[..., 6:].abs().max()) > 0.05 * float(flat[..., :6].abs().max())


def test_graph_is_symmetric_and_cut_at_edges():
    x = two_regions(6, 6)
    graph = image_graph(x)
    adj = graph.dense_adjacency()[0]
    torch.testing.assert_close(adj, adj.T)
    v = rand_image(b=1, c=2, h=6, w=6)
    torch.testing.assert_close(graph.adjacency_matvec(v).flatten(2), v.flatten(2) @ adj.T)
    left, right = torch.arange(36).view(6, 6)[:, :3].flatten(), torch.arange(36).view(6, 6)[:, 3:].flatten()
    assert float(adj[left][:, right].max()) < 1e-4
    noise = rand_image(b=1, c=1, h=6, w=6) - 0.5
    assert float(graph.smoothness(torch.ones_like(noise))) < 0.1 * float(graph.smoothness(noise))


def test_solver_and_alpha_follow_image_size():
    small, large = torch.rand(1, 1, 28, 28), torch.rand(1, 3, 40, 40)
    assert LaplacianSmoother(small, None).solver_name == "dense" and default_alpha(28, 28) == 0.95
    s = LaplacianSmoother(large, None)
    assert s.solver_name == "cg" and s.alpha == 0.997 and default_alpha(224, 224) == 0.997


@pytest.mark.parametrize("kwargs, message", [({"alpha": 1.0}, "alpha"), ({"alpha": -0.1}, "alpha"),
                                             ({"solver": "lu"}, "solver.*dense"), ({"cg_steps": 0}, "iterations"),
                                             ({"feature_kernel": "box"}, "feature_kernel"),
                                             ({"neighbours": 6}, "neighbours")])
def test_bad_smoother_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LaplacianSmoother(torch.rand(1, 1, 5, 5), **kwargs)


def test_signal_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="like the guide"):
        LaplacianSmoother(torch.rand(2, 1, 5, 5))(torch.rand(2, 1, 5, 4))


# ---------------------------------------------------------------- bilateral filter, magnification

def brute_force_bilateral(x, sigma_s, sigma_r, radius, guide):
    b, c, h, w = x.shape
    out = torch.zeros_like(x)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                num, den = 0.0, 0.0
                for p in range(max(0, i - radius), min(h, i + radius + 1)):
                    for q in range(max(0, j - radius), min(w, j + radius + 1)):
                        d2 = (i - p) ** 2 + (j - q) ** 2
                        if d2 > radius ** 2:
                            continue
                        g2 = float((guide[n, :, i, j] - guide[n, :, p, q]).square().sum())
                        k = math.exp(-d2 / (2 * sigma_s ** 2) - g2 / (2 * sigma_r ** 2))
                        num, den = num + k * x[n, :, p, q], den + k
                out[n, :, i, j] = num / den
    return out


@pytest.mark.parametrize("guided", [False, True])
def test_bilateral_matches_definition(guided):
    x = rand_image(b=1, c=2, h=6, w=5)
    guide = rand_image(b=1, c=3, h=6, w=5, seed=4) if guided else None
    expected = brute_force_bilateral(x, 1.3, 0.2, 2, x if guide is None else guide)
    torch.testing.assert_close(bilateral_filter(x, 1.3, 0.2, radius=2, guide=guide), expected)


def test_bilateral_preserves_edges_and_flattens_noise():
    x = two_regions(16, 16)
    torch.testing.assert_close(bilateral_filter(x, 3.0, 0.1), x, atol=1e-6, rtol=0)
    noisy = (0.5 + 0.01 * torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64))
    assert float(bilateral_filter(noisy, 3.0, 0.1).std()) < 0.3 * float(noisy.std())


@pytest.mark.parametrize("kwargs, message", [({"sigma_s": 0.0}, "sigma_s"), ({"sigma_r": -1.0}, "sigma_r"),
                                             ({"radius": -2}, "radius"),
                                             ({"guide": torch.rand(1, 1, 4, 4)}, "guide")])
def test_bilateral_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bilateral_filter(torch.rand(1, 1, 5, 5), **kwargs)


def test_magnification_reveals_noise_more_than_a_smooth_perturbation_of_equal_norm():
    """Eq. 4.16 normalises by the local deviation: white noise in flat areas explodes, a
    perturbation smooth like x (here: a multiple of x's own low-frequency ramp) does not."""
    h = w = 16
    ramp = torch.linspace(0.2, 0.8, w, dtype=torch.float64).expand(1, 1, h, w).clone()
    noise = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    smooth = ramp - ramp.mean()
    noise, smooth = (t * 0.1 / t.norm() for t in (noise, smooth))  # ~1.6 levels of 8 bits per pixel
    base = adversarial_magnification(ramp)
    change_noise = (adversarial_magnification(ramp + noise) - base).norm()
    change_smooth = (adversarial_magnification(ramp + smooth) - base).norm()
    assert float(change_noise) > 5 * float(change_smooth)
    shown = magnify(ramp, ramp + noise)
    assert shown.shape == ramp.shape and float(shown.min()) >= 0 and float(shown.max()) <= 1
    with pytest.raises(ValueError, match="beta"):
        adversarial_magnification(ramp, beta=1.5)
