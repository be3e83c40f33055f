"""Patch replacement (thesis 6.3) unit tests: E8, decomposition/reconstruction, strategies, codebooks,
hooks, BPDA gradient, save/load and bad input. The trained-C4 checks are in test_patch_replacement_c4.py."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advtrain.defenses import DEFENSES, build_defense
from advtrain.defenses.codebooks import PQCodebook, fit_kmeans, load_safetensors, save_safetensors
from advtrain.defenses.defended import Defended
from advtrain.defenses.e8 import E8Lattice
from advtrain.defenses.patch_replacement import LayerConfig, PatchReplacement
from advtrain.defenses.patches import PatchGeometry, extract_patches, fold_patches
from advtrain.defenses.strategies import STRATEGIES, get_strategy
from advtrain.models import build_model

CONV1 = "net.features.0"
U32 = 2.0 ** -24  # unit roundoff of float32


def brute_force_e8(x: torch.Tensor) -> torch.Tensor:
    """Nearest E8 points of the rows of ``x`` by enumeration. E8's covering radius is 1, so each
    coordinate of the nearest point lies within 1 of x's: enumerate D8 and D8 + 1/2 points with
    coordinates round(x_i - shift) + {-1, 0, 1} + shift."""
    offsets = torch.tensor(list(itertools.product((-1, 0, 1), repeat=8)), dtype=x.dtype)
    cands = torch.cat([torch.round(x - s)[:, None] + offsets + s for s in (0.0, 0.5)], dim=1)
    shift = cands[..., :1] - torch.floor(cands[..., :1])          # 0 or 1/2 per candidate
    dist = (cands - x[:, None]).pow(2).sum(-1)
    dist[(cands - shift).sum(-1).remainder(2) != 0] = float("inf")  # not in D8 (+ 1/2)
    return cands[torch.arange(len(x)), dist.argmin(1)]


def in_e8(p: torch.Tensor) -> torch.Tensor:
    """Membership test: all integer or all half-integer, with an even sum."""
    two = 2 * p
    ints = (two.remainder(2) == 0).all(-1)
    halves = (two.remainder(2) == 1).all(-1)
    return (ints | halves) & (p.sum(-1).remainder(2) == 0)


# ------------------------------------------------------------------------------------------ E8
def test_e8_nearest_point_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(60, 8, generator=g, dtype=torch.float64) - 0.5) * 8
    q = E8Lattice(1.0).nearest_point(x)
    assert bool(in_e8(q).all())
    bf = brute_force_e8(x)
    assert torch.allclose((q - x).pow(2).sum(1), (bf - x).pow(2).sum(1), rtol=0, atol=1e-12)
    assert torch.equal(q, bf)  # random inputs: no ties


def test_e8_scale_lattice_points_and_bad_dimension():
    x = torch.randn(100, 8, dtype=torch.float64)
    s = 0.3
    assert torch.allclose(E8Lattice(s).nearest_point(x), s * E8Lattice(1.0).nearest_point(x / s))
    pts = E8Lattice(1.0).nearest_point(x * 3)
    assert torch.equal(E8Lattice(1.0).nearest_point(pts), pts)  # lattice points are fixed
    with pytest.raises(ValueError, match="8"):
        E8Lattice(1.0).nearest_point(torch.randn(3, 4))
    with pytest.raises(ValueError, match="scale"):
        E8Lattice(0.0)


# ------------------------------------------------------------------------------ reconstruction
@settings(max_examples=40, deadline=None)
@given(a=st.integers(0, 2), c_minus=st.integers(0, 4), d=st.sampled_from([1, 2, 4]),
       m=st.integers(1, 3), h=st.integers(1, 11), w=st.integers(1, 11))
def test_fold_of_unchanged_patches_is_the_identity(a, c_minus, d, m, h, w):
    k = 2 * a + 1
    geom = PatchGeometry(a=a, c=max(1, k - c_minus), d=d)
    feat = torch.randn(2, m * d, h, w)
    patches, layout = extract_patches(feat, geom)
    assert patches.shape[0] == m and patches.shape[2] == d * k * k
    # n <= k^2 equal float32 copies averaged: error <= (n + 1) u |x| (see fold_columns)
    torch.testing.assert_close(fold_patches(patches, layout), feat, rtol=(k * k + 1) * U32, atol=0)
    kkd, _ = extract_patches(feat, geom, order="kkd")
    assert torch.equal(kkd, patches[..., geom.kkd_order()])


@pytest.mark.parametrize("a,c", [(1, 1), (2, 1), (2, 3)])
def test_float32_overlap_average_is_within_its_rounding_bound_of_float64(a, c):
    """Different copies (replaced patches): |mean32 - mean64| <= (n + 1) u mean|copies|, n <= k^2
    (recursive summation gamma_{n-1} sum|v| / n, plus the division's rounding u |mean|)."""
    geom = PatchGeometry(a=a, c=c, d=2)
    g = torch.Generator().manual_seed(3)
    patches, layout = extract_patches(torch.zeros(3, 4, 13, 11), geom)
    patches = torch.randn(patches.shape, generator=g) * 10 ** torch.randint(-3, 3, patches.shape[:2] + (1,), generator=g)
    exact = fold_patches(patches.double(), layout)
    mean_abs = fold_patches(patches.double().abs(), layout)
    err = (fold_patches(patches, layout).double() - exact).abs()
    assert bool((err <= (geom.k ** 2 + 1) * U32 * mean_abs).all()), float((err / mean_abs).max() / U32)
    assert float(err.max()) > 0, "float32 rounding expected somewhere (else the test measures nothing)"


def test_overlap_averages_patches():
    """With c < 2a+1 a value is the mean of its copies in the overlapping patches."""
    geom = PatchGeometry(a=1, c=1, d=1)
    feat = torch.zeros(1, 1, 5, 5)
    patches, layout = extract_patches(feat, geom)
    patches[:, 0] = 1.0                      # first patch (top-left 3x3) set to ones
    out = fold_patches(patches, layout)
    assert out[0, 0, 0, 0] == 1.0            # covered by that patch only
    assert torch.isclose(out[0, 0, 2, 2], torch.tensor(1 / 9))  # centre: one of 9 patches


# -------------------------------------------------------------------------------- strategies
def test_strategies_eq_6_3_to_6_5():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(500, 9, generator=g)
    q = p + torch.randn(500, 9, generator=g) * torch.rand(500, 1, generator=g) * 0.4
    for name in ("l2", "linf", "linear"):
        assert torch.equal(get_strategy(name, 0.0)(p, q), p)
    assert torch.equal(get_strategy("plain", 0.3)(p, q), q)
    assert torch.allclose(get_strategy("linear", 1.0)(p, q), q)
    assert torch.allclose(get_strategy("l2", 100.0)(p, q), q)
    assert torch.allclose(get_strategy("linf", 100.0)(p, q), q)
    l2 = get_strategy("l2", 0.5)(p, q)
    assert bool(((l2 - p).norm(dim=1) <= 0.5 + 1e-6).all())
    near = (q - p).norm(dim=1) < 0.5
    assert near.any() and (~near).any() and torch.equal(l2[near], q[near])
    assert float((get_strategy("linf", 0.1)(p, q) - p).abs().max()) <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="valid: plain, l2, linf, linear"):
        get_strategy("l1", 0.1)
    with pytest.raises(ValueError, match="strength"):
        get_strategy("l2", -1.0)
    assert set(STRATEGIES) == {"plain", "l2", "linf", "linear"}


# ---------------------------------------------------------------------------------- codebooks
def test_pq_nearest_codeword_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    cents = torch.rand(3, 50, 9, generator=g)
    patches = torch.rand(3, 400, 9, generator=g)
    q = PQCodebook(cents).to_codewords(patches)
    idx = torch.cdist(patches.double(), cents.double()).argmin(-1)
    assert torch.equal(q, cents.gather(1, idx.unsqueeze(-1).expand(-1, -1, 9)))
    uni = PQCodebook(cents[:1], universal=True).to_codewords(patches)
    idx = torch.cdist(patches.double(), cents[:1].double()).argmin(-1)
    assert torch.equal(uni, cents[0][idx])


def test_kmeans_fit_shapes_and_too_many_codewords():
    patches = torch.rand(2, 300, 9)
    book = fit_kmeans(patches, 16)
    assert book.centroids.shape == (2, 16, 9) and book.kind == "pq"
    assert fit_kmeans(patches, 16, universal=True).centroids.shape == (1, 16, 9)
    with pytest.raises(ValueError, match="exceed the number of training patches"):
        fit_kmeans(patches, 301)


# --------------------------------------------------------------------- defense on a small C4
@pytest.fixture(scope="module")
def c4():
    torch.manual_seed(0)
    return build_model("c4").eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    x = torch.rand(12, 1, 28, 28)
    x[:, :, :6] = 0.0  # flat regions, as in MNIST
    return x


def loader(x, bs=4):
    return [(x[i:i + bs], torch.zeros(len(x[i:i + bs]), dtype=torch.long)) for i in range(0, len(x), bs)]


@pytest.mark.parametrize("a,c", [(1, 1), (1, 2), (1, 3), (2, 3)])
def test_plain_replacement_with_every_training_patch_reproduces_training_images(c4, images, a, c):
    pr = PatchReplacement(c4, [dict(layer="image", a=a, c=c, K=1)])
    patches, _ = extract_patches(images, PatchGeometry(a, c, 1))
    pr.set_codebook(0, PQCodebook(torch.unique(patches[0], dim=0)[None]))
    k = 2 * a + 1  # every patch is its own codeword: only the float32 average's rounding remains
    torch.testing.assert_close(pr.defenses[0](images), images, rtol=(k * k + 1) * U32, atol=0)
    with torch.no_grad():  # inputs within 1e-6 relative: logits within float32 tolerance
        torch.testing.assert_close(pr(images), c4(images))


@pytest.fixture(scope="module")
def two_layer(c4, images):
    """Image (K=8) + first conv (d=4, K=8) codebooks fitted on the small image set."""
    return PatchReplacement(c4, [dict(layer="image", K=8), dict(layer=CONV1, d=4, K=8)]).fit(
        loader(images), max_patches=2000)


def conv1_features(c4, x):
    with torch.no_grad():
        return c4.net.features[0](c4.normalize(x))


@pytest.mark.parametrize("strategy", ["l2", "linf", "linear"])
def test_strength_zero_is_the_identity_for_every_non_plain_strategy(c4, images, two_layer, strategy):
    pr = PatchReplacement(c4, [dict(cfg.__dict__, strategy=strategy, strength=0.0) for cfg in two_layer.layers])
    for i, stage in enumerate(two_layer.defenses):
        pr.set_codebook(i, stage.codebook)
    feat = conv1_features(c4, images)
    with torch.no_grad():
        assert torch.allclose(pr.defenses[0](images), images, atol=1e-6)
        assert torch.allclose(pr.defenses[1](feat), feat, atol=1e-5)
        assert torch.allclose(pr(images), c4(images), atol=1e-5)
        assert not torch.allclose(two_layer(images), c4(images), atol=1e-3)  # plain does change things


def test_linf_keeps_each_value_within_strength(c4, images, two_layer):
    strength = 0.05
    pr = PatchReplacement(c4, [dict(cfg.__dict__, strategy="linf", strength=strength) for cfg in two_layer.layers])
    for i, stage in enumerate(two_layer.defenses):
        pr.set_codebook(i, stage.codebook)
    feat = conv1_features(c4, images)
    with torch.no_grad():
        for stage, f in zip(pr.defenses, (images, feat)):
            change = (stage(f) - f).abs()
            assert float(change.max()) <= strength + 1e-6 and float(change.max()) > strength / 2


def test_multi_layer_hooks_are_scoped_and_compose(c4, images, two_layer):
    with torch.no_grad():
        clean = c4(images)
        both = two_layer(images)
        image_only = PatchReplacement(c4, two_layer.layers[:1])
        image_only.set_codebook(0, two_layer.defenses[0].codebook)
        assert not torch.allclose(both, image_only(images), atol=1e-4)  # the conv layer acts too
        assert torch.equal(c4(images), clean)                            # hooks removed afterwards
        assert not c4._forward_pre_hooks and not c4.net.features[0]._forward_hooks
        assert torch.allclose(two_layer.attack_view("bpda")(images), both)
        assert two_layer.attack_view("blackbox") is c4
    assert isinstance(two_layer, Defended) and two_layer.needs_bpda is True
    assert two_layer.approximated == ["patch_replacement[image]", f"patch_replacement[{CONV1}]"]


def test_bpda_view_passes_the_gradient_through_unchanged(c4, images, two_layer):
    """Image layer, plain: the BPDA gradient at x equals the model's gradient at Q(x) (identity backward)."""
    pr = PatchReplacement(c4, two_layer.layers[:1])
    pr.set_codebook(0, two_layer.defenses[0].codebook)
    x = images.clone().requires_grad_(True)
    (g_bpda,) = torch.autograd.grad(pr.attack_view("bpda")(x).sum(), x)
    xq = pr.defenses[0](images).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(c4(xq).sum(), xq)
    assert torch.allclose(g_bpda, g_ref, atol=1e-6) and g_ref.abs().sum() > 0
    x = images.clone().requires_grad_(True)
    (g_direct,) = torch.autograd.grad(pr(x).sum(), x)  # plain replacement: zero gradient a.e.
    assert float(g_direct.abs().max()) == 0.0


def test_save_load_roundtrip_and_refusals(c4, images, two_layer, tmp_path):
    path = two_layer.save(tmp_path / "codebooks.safetensors")
    loaded = PatchReplacement.load(c4, path)
    assert loaded.layers == two_layer.layers
    with torch.no_grad():
        assert torch.equal(loaded(images), two_layer(images))
    # the strategy may change without refitting, the codebook geometry may not
    linf = [dict(cfg.__dict__, strategy="linf", strength=0.01) for cfg in two_layer.layers]
    assert PatchReplacement(c4, linf, codebooks=path).layers[1].strategy == "linf"
    with pytest.raises(ValueError, match="differ"):
        PatchReplacement(c4, [dict(cfg.__dict__, K=9) for cfg in two_layer.layers], codebooks=path)
    # a codebook for another model is refused
    with pytest.raises(ValueError, match="fitted for another model"):
        PatchReplacement.load(build_model("c4", in_channels=3), path)
    with pytest.raises(ValueError, match="fitted for another model"):
        PatchReplacement.load(build_model("cifar_cnn"), path)
    # by registry name, e.g. from an evaluation config
    built = build_defense("patch_replacement", model=c4, codebooks=str(path))
    with torch.no_grad():
        assert torch.equal(built(images), two_layer(images))
    assert DEFENSES["patch_replacement"] is PatchReplacement
    with pytest.raises(FileNotFoundError):
        PatchReplacement.load(c4, tmp_path / "missing.safetensors")


def test_a_file_saved_before_the_strength_rename_keeps_its_strategy(c4, two_layer, tmp_path):
    """Files saved when the strategy parameter was called ``eps`` load with that value as ``strength``."""
    tensors, header = load_safetensors(two_layer.save(tmp_path / "new.safetensors"))
    for i, spec in enumerate(header["layers"]):
        spec.pop("strength")
        spec.update(strategy="linf", eps=0.01 * (i + 1))
    old = save_safetensors(tmp_path / "old.safetensors", tensors, header)
    assert [(c.strategy, c.strength) for c in PatchReplacement.load(c4, old).layers] == [("linf", 0.01), ("linf", 0.02)]


def test_e8_codebook_on_the_first_conv(c4, images):
    pr = PatchReplacement(c4, [dict(layer=CONV1, d=8, codebook="e8", scale=0.5)])
    feat = conv1_features(c4, images)
    out = pr.defenses[0](feat)
    vecs = out.view(12, 8, 8, 14, 14).permute(0, 1, 3, 4, 2) / 0.5  # depth-8 vectors of each slice
    assert bool(in_e8(vecs.double()).all())
    assert float((out - feat).abs().max()) <= 0.5  # within the covering radius (1 * scale)


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_is_a_clear_error(c4, images):
    with pytest.raises(ValueError, match=r"unknown layer 'net.features.9'.*valid layers: image, .*net.features.0"):
        PatchReplacement(c4, [dict(layer="net.features.9")])
    with pytest.raises(ValueError, match=r"d=5 does not divide the channel count D=64; valid d: \[1, 2, 4, 8"):
        PatchReplacement(c4, [dict(layer=CONV1, d=5, K=4)]).fit(loader(images))
    with pytest.raises(ValueError, match="exceed the number of training patches"):
        PatchReplacement(c4, [dict(layer="image", c=3, K=1000)]).fit(loader(images[:4]))
    with pytest.raises(ValueError, match="E8 codebook needs slices of depth d = 8"):
        LayerConfig(layer=CONV1, codebook="e8", d=4)
    with pytest.raises(ValueError, match="unknown codebook 'opq'; valid: pq, universal, e8"):
        LayerConfig(codebook="opq")
    with pytest.raises(ValueError, match="unknown replacement strategy"):
        LayerConfig(strategy="soft")
    with pytest.raises(ValueError, match="stride c=4 must be <= 2a\\+1=3"):
        LayerConfig(c=4)
    with pytest.raises(ValueError, match="no option 'k'"):
        PatchReplacement(c4, [dict(layer="image", k=3)])
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchReplacement(c4, [dict(layer="image")])(images)
    with pytest.raises(ValueError, match="at least one layer"):
        PatchReplacement(c4)


@pytest.mark.parametrize("codebook,strategy", [("pq", "plain"), ("e8", "plain"), ("e8", "linf")])
def test_fast_paths_match_the_patchwise_definition(c4, images, codebook, strategy):
    """The plain-PQ path (kkd search, column fold) and the pixelwise E8 path give the defense of
    thesis 6.3.1-6.3.4 computed patch by patch (extract, nearest codewords, strategy, fold)."""
    cfg = dict(layer=CONV1, d=8, codebook="e8", scale=0.5) if codebook == "e8" else dict(layer=CONV1, d=4, K=16)
    pr = PatchReplacement(c4, [dict(cfg, strategy=strategy, strength=0.05)])
    if codebook == "pq":
        pr.set_codebook(0, PQCodebook(torch.randn(16, 16, 36, generator=torch.Generator().manual_seed(4))))
    stage, feat = pr.defenses[0], conv1_features(c4, images)
    patches, layout = extract_patches(feat, stage.config.geometry)
    expected = fold_patches(get_strategy(strategy, 0.05)(patches, stage.codebook.to_codewords(patches)), layout)
    torch.testing.assert_close(stage(feat), expected, rtol=10 * U32, atol=10 * U32 * float(feat.abs().max()))
