"""Input-transform defenses (thesis 6.2, 6.5), BPDA (thesis 6.6) and Defended composition."""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from torch import nn

from advtrain.defenses import DEFENSES, build_defense
from advtrain.defenses.bpda import bpda
from advtrain.defenses.defended import Defended
from advtrain.smoothing.bilateral import bilateral_filter


@pytest.fixture
def images():
    return torch.rand(3, 2, 13, 11, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bits", [3, 5])
def test_bit_depth_rounds_to_the_grid(images, bits):
    d = build_defense("bit_depth", bits=bits)
    out = d(images)
    levels = 2 ** bits - 1
    assert torch.allclose(out * levels, (out * levels).round(), atol=1e-5)
    assert (out - images).abs().max() <= 0.5 / levels + 1e-6
    assert torch.equal(d(out), out) and d.needs_bpda


@pytest.mark.parametrize("size", [2, 3])
def test_median_matches_scipy(images, size):
    ours = build_defense("median", size=size)(images).numpy()
    ref = ndi.median_filter(images.numpy(), size=(1, 1, size, size), mode="reflect")
    np.testing.assert_allclose(ours, ref, atol=0)


def test_pixel_deflection_is_a_bounded_random_local_copy(images):
    d = build_defense("pixel_deflection", deflections=40, window=2, sigma=0.0)
    torch.manual_seed(0)
    a = d(images)
    torch.manual_seed(0)
    assert torch.equal(a, d(images))  # seeded: reproducible
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    changed = ((a - images).abs() > 1e-5).float().mean()
    assert 0 < changed < 40 / (13 * 11) + 1e-6  # at most `deflections` pixels per channel, no denoising
    amap = d.activation_map(images)
    assert amap.shape == (3, 13, 11) and amap.min() >= 0 and amap.max() <= 1
    # no deflection and sigma 0: the Haar analysis/synthesis is the identity
    ident = build_defense("pixel_deflection", deflections=0, sigma=0.0)
    assert torch.allclose(ident(images), images, atol=1e-6)
    # denoising removes noise energy
    smooth = build_defense("pixel_deflection", deflections=0, sigma=0.1)(images)
    assert (smooth - images).abs().mean() > 0.01


def test_bilateral_uses_the_library_filter_and_is_pluggable(images):
    d = build_defense("bilateral", sigma_s=1.0, radius=2)
    assert torch.allclose(d(images), bilateral_filter(images, sigma_s=1.0, sigma_r=5 / 255, radius=2))
    assert not d.needs_bpda
    calls = []
    custom = build_defense("bilateral", filter_fn=lambda x, **kw: calls.append(kw) or x * 0)
    assert torch.equal(custom(images), images * 0) and calls[0]["sigma_s"] == 5.0


def test_bpda_forward_is_the_defense_backward_identity_or_approx(images):
    d = build_defense("bit_depth", bits=3)
    w = torch.randn_like(images)
    x = images.clone().requires_grad_(True)
    (g_direct,) = torch.autograd.grad((d(x) * w).sum(), x, allow_unused=True, materialize_grads=True)
    assert g_direct.abs().sum() == 0  # the masking BPDA undoes
    wrapped = bpda(d)
    assert torch.equal(wrapped(images), d(images))
    (g,) = torch.autograd.grad((wrapped(x) * w).sum(), x)
    assert torch.equal(g, w)
    (g2,) = torch.autograd.grad((bpda(d, approx=lambda t: 2 * t)(x) * w).sum(), x)
    assert torch.allclose(g2, 2 * w)


def test_defended_composes_in_order_and_builds_attack_views(images):
    model = nn.Flatten()
    bd, med, bil = (build_defense("bit_depth", bits=3), build_defense("median", size=3),
                    build_defense("bilateral", sigma_s=1.0, radius=1))
    m = Defended(model, bd, med, bil)
    assert torch.equal(m(images), model(bil(med(bd(images)))))
    assert m.approximated == ["bit_depth", "median"]
    view = m.attack_view("bpda")
    assert torch.equal(view(images), m(images))
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(view(x).sum(), x)
    assert g.abs().sum() > 0
    assert m.attack_view("blackbox") is model and m.attack_view("direct") is m
    with pytest.raises(ValueError, match="unknown attack view 'white'"):
        m.attack_view("white")


def test_registry_errors_are_clear():
    assert {"bit_depth", "median", "pixel_deflection", "bilateral"} <= set(DEFENSES)
    with pytest.raises(ValueError, match="unknown defense 'jpeg'; known: .*bit_depth"):
        build_defense("jpeg")
    with pytest.raises(ValueError, match="no option 'bit'; valid options: bits"):
        build_defense("bit_depth", bit=3)
    with pytest.raises(ValueError, match="bits must be an integer in 1..8"):
        build_defense("bit_depth", bits=0)
