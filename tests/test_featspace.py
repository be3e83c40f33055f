"""Feature-space attacks (FEATURE_ATTACKS.md sections 1, 2, 5): D2B's statistics, quantile bound and
barrier; the style attack's encoder/decoder files and log bound; the unrestricted family in the
evaluation; one-line errors for bad input."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advtrain.attacks import build_attack
from advtrain.nn.layers import features
from advtrain.featspace.bound import R_LINEAR, QuantileBound, barrier, floored_std, plane_bounds
from advtrain.featspace.decoder import Decoder, adain, fit_style_decoder
from advtrain.featspace.encoder import Encoder, MnistVggMini
from advtrain.featspace.stats import ActivationStats, fit_activation_stats
from featspace_files import untrained_style_pair

pytestmark = pytest.mark.usefixtures("one_thread")
PLANES = ["net.features.0", "net.features.2"]


@pytest.fixture(scope="module")
def train_x(mnist_dm):
    return torch.stack([mnist_dm.train_set[i][0] for i in range(512)])


@pytest.fixture(scope="module")
def c4_stats(trained_c4, train_x):
    """Statistics of the trained C4 on 512 training digits (4 batches: exercises the streaming sums)."""
    return fit_activation_stats(trained_c4, list(train_x.split(128)), PLANES, progress=False)


# ------------------------------------------------------------------ statistics and barrier

def test_statistics_match_a_direct_computation(trained_c4, train_x, c4_stats, tmp_path):
    feats = features(trained_c4, train_x, PLANES)
    for k in PLANES:
        a = feats[k].detach().double()
        torch.testing.assert_close(c4_stats.mean[k].double(), a.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c4_stats.std[k].double(), a.std(0, unbiased=False), rtol=1e-4, atol=1e-5)
    assert c4_stats.count == 512
    back = ActivationStats.load(c4_stats.save(tmp_path / "s.safetensors"), trained_c4)
    assert back.layers == PLANES and all(torch.equal(back.std[k], c4_stats.std[k]) for k in PLANES)


def _synthetic(quantile: float = 0.2) -> QuantileBound:
    """One sample, 4 neurons, standard-normal statistics, a0 at quantiles 0.5, 0.7, 0.05, 0.95."""
    a0 = torch.tensor([0.0, 0.5244005, -1.6448536, 1.6448536]).view(1, 4, 1, 1)
    return QuantileBound(a0, torch.zeros(4, 1, 1), torch.ones(4, 1, 1), quantile)


def test_quantile_bounds_agree_with_scipy():
    norm = pytest.importorskip("scipy.stats").norm
    b = _synthetic(0.2)
    q = norm.cdf(b.a0.flatten().numpy())
    lo = [norm.ppf(v - 0.2) if v - 0.2 > 0 else -math.inf for v in q]
    hi = [norm.ppf(v + 0.2) if v + 0.2 < 1 else math.inf for v in q]
    assert b.lo.flatten().tolist() == pytest.approx(lo, abs=1e-6)
    assert b.hi.flatten().tolist() == pytest.approx(hi, abs=1e-6)
    assert bool(b.lo_open.flatten()[2]) and bool(b.hi_open.flatten()[3])  # 0.05 - 0.2 and 0.95 + 0.2 leave (0, 1)


def test_barrier_is_zero_inside_one_on_the_bound_and_explodes_outside():
    b = _synthetic(0.2)
    assert float(barrier(b.ratio(b.a0))) == 0.0  # x' = x
    mid = b.a0 + 0.4 * (b.hi.nan_to_num(posinf=10) - b.a0)  # within the central half (start p = 0.5)
    assert float(barrier(b.ratio(mid))) == 0.0
    on = b.a0.clone()
    on[0, 0] = b.hi[0, 0]  # one neuron exactly on its upper bound
    assert float(barrier(b.ratio(on))) == pytest.approx(1.0, rel=1e-9)
    out = b.a0.clone()
    out[0, 0] = b.hi[0, 0] + 0.1 * (b.hi[0, 0] - b.a0[0, 0])  # r = 1.2: 1.2^200 = 7e15
    assert float(barrier(b.ratio(out))) == pytest.approx(1.2 ** 200, rel=1e-6)
    far = b.a0 + torch.tensor([0.0, 0.0, -1e6, 1e6]).view(1, 4, 1, 1)  # along the open sides: unbounded, no NaN
    assert float(barrier(b.ratio(far))) == 0.0
    way_out = b.a0 + torch.tensor([100.0, 0, 0, 0]).view(1, 4, 1, 1)
    v = barrier(b.ratio(way_out.requires_grad_(True)))
    (g,) = torch.autograd.grad(v.sum(), way_out)
    assert math.isfinite(float(v.detach())) and float(v.detach()) > R_LINEAR ** 200 and bool(torch.isfinite(g.float()).all())


def test_sigma_floor_lifts_constant_neurons():
    std = torch.tensor([0.0, 0.2, 1.0, 2.0, 3.0])  # median 1.0
    assert floored_std(std, 0.3).tolist() == pytest.approx([0.3, 0.3, 1.0, 2.0, 3.0])


# ------------------------------------------------------------------ D2B

def test_d2b_respects_the_quantile_bound_at_every_tapped_neuron(trained_c4, correct_test_batch, c4_stats):
    x, y = correct_test_batch[0][:16], correct_test_batch[1][:16]
    attack = build_attack("d2b", stats=c4_stats, quantile=0.3, steps=30)
    res = attack(trained_c4, x, y)
    with torch.no_grad():
        a0, a1 = features(trained_c4, x, PLANES), features(trained_c4, res.x_adv, PLANES)
    bounds = plane_bounds(c4_stats, a0, 0.3, attack.sigma_floor)
    for k in PLANES:
        assert float(bounds[k].ratio(a1[k]).max()) <= 1.0 + 1e-6, k
        inside = (a1[k].double() >= bounds[k].lo - 1e-6) & (a1[k].double() <= bounds[k].hi + 1e-6)
        assert bool(inside.all()), k
    failed = ~res.success
    assert torch.equal(res.x_adv[failed], x[failed])
    assert res.grads <= 30


def test_d2b_is_deterministic_and_tiny_quantiles_leave_x(trained_c4, correct_test_batch, c4_stats):
    x, y = correct_test_batch[0][:8], correct_test_batch[1][:8]
    a = build_attack("d2b", stats=c4_stats, quantile=0.3, steps=10)
    torch.manual_seed(0)
    r1 = a(trained_c4, x, y)
    torch.manual_seed(0)
    r2 = a(trained_c4, x, y)
    assert torch.equal(r1.x_adv, r2.x_adv)
    frozen = build_attack("d2b", stats=c4_stats, quantile=1e-9, steps=5)(trained_c4, x, y)
    assert torch.equal(frozen.x_adv, x) and not bool(frozen.success.any())


def test_d2b_bad_input(trained_c4, correct_test_batch, c4_stats, tmp_path):
    x, y = correct_test_batch[0][:2], correct_test_batch[1][:2]
    for q in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\)"):
            build_attack("d2b", quantile=q)
    with pytest.raises(ValueError, match="unknown layer 'net.nope'.*valid layers"):
        build_attack("d2b", stats=c4_stats, layers=["net.nope"])(trained_c4, x, y)
    path = c4_stats.save(tmp_path / "stats.safetensors")
    other = build_attack("d2b", stats=str(path), steps=2)
    torch.manual_seed(1)
    from advtrain.models import build_model
    with pytest.raises(ValueError, match="fitted on another model") as err:
        other(build_model("c4").eval(), x, y)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no plane net.features.4"):
        build_attack("d2b", stats=c4_stats, layers=["net.features.4"])(trained_c4, x, y)


# ------------------------------------------------------------------ FSA

@pytest.fixture(scope="module")
def style_pair(tmp_path_factory, train_x, mnist_dm):
    """A briefly trained encoder (1 epoch on 512 digits) and decoder (30 steps): the machinery, not
    the quality (the real one: bench/featspace.py)."""
    from advtrain.featspace.encoder import fit_encoder
    d = tmp_path_factory.mktemp("fsa")
    y = torch.tensor([mnist_dm.train_set[i][1] for i in range(len(train_x))])
    enc = fit_encoder(list(zip(train_x.split(64), y.split(64))), epochs=1, progress=False)
    enc_path = enc.save(d / "enc.safetensors")
    dec_path = fit_style_decoder(enc_path, d / "dec.safetensors", train_x, y, steps=30, batch_size=32,
                                 checkpoint_every=15, progress=False)
    return {"encoder": str(enc_path), "decoder": str(dec_path)}


def test_decoder_training_writes_a_bound_file_and_resumes(style_pair):
    enc = Encoder.load(style_pair["encoder"])
    dec = Decoder.load(style_pair["decoder"], enc)
    x = torch.rand(2, 1, 28, 28)
    out = dec(adain(enc(x), enc(x.flip(0))))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def test_fsa_scalings_stay_in_the_log_bound_and_it_is_deterministic(trained_c4, correct_test_batch, style_pair):
    x, y = correct_test_batch[0][:8], correct_test_batch[1][:8]
    attack = build_attack("fsa", bound=1.5, steps=15, lr=0.05, **style_pair)
    r1 = attack(trained_c4, x, y)
    s = attack.last_scalings
    assert float(s.max()) <= 1.5 * (1 + 1e-6) and float(s.min()) >= (1 / 1.5) * (1 - 1e-6)
    assert float((s - 1).abs().max()) > 0.1  # it moved (lr 0.05 x 15 Adam steps)
    r2 = attack(trained_c4, x, y)
    assert torch.equal(r1.x_adv, r2.x_adv) and r1.grads == 15


def test_fsa_bad_input(style_pair, tmp_path):
    with pytest.raises(ValueError, match="bound must be > 1"):
        build_attack("fsa", bound=0.9, **style_pair)
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match="fsa needs encoder and decoder files"):  # when called, not built:
        build_attack("fsa")(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x, torch.zeros(1, dtype=torch.long))  # a suite fits them first
    other = untrained_style_pair(seed=1)
    with pytest.raises(ValueError, match="fitted on another model") as err:
        build_attack("fsa", encoder=other["encoder"], decoder=style_pair["decoder"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="holds 'fsa-encoder', not 'fsa-decoder'"):
        build_attack("fsa", encoder=style_pair["encoder"], decoder=style_pair["encoder"])


# ------------------------------------------------------------------ evaluation: the unrestricted family

def test_unrestricted_family_in_the_evaluation(trained_c4, mnist_dm, c4_stats, style_pair, tmp_path):
    from advtrain.evaluation import run_suite
    from advtrain.evaluation.report import plot_curves, write_report
    stats = str(c4_stats.save(tmp_path / "stats.safetensors"))
    suite = [{"attack": "ifgsm", "options": {"steps": 5, "early_stop": True}, "budgets": [0.1, 0.2]},
             {"attack": "d2b", "options": {"stats": stats, "quantile": 0.3, "steps": 10}},
             {"attack": "fsa", "options": {"steps": 5, **style_pair}}]
    res = run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=16, quantize="no", progress=False,
                    out_dir=tmp_path)
    for label in ("d2b", "fsa"):
        e = res["attacks"][label]
        assert e["status"] == "done" and e["family"] == "unrestricted", e.get("error")
        p = e["unquantized"]["perceptual"]
        assert set(p) == {"l2", "linf", "ssim", "psnr", "feature"}
        if e["unquantized"]["n_suc"]:
            assert 0 < p["ssim"] <= 1 and p["feature"] is not None
    with pytest.raises(ValueError, match="budgets"):
        run_suite(trained_c4, mnist_dm.test_dataloader(), [{"attack": "d2b", "budgets": [0.1]}], n=4)
    write_report(res, tmp_path / "report.md")
    plot_curves(res, tmp_path / "curves.png")
    report = (tmp_path / "report.md").read_text()
    assert "Unrestricted attacks" in report and "feature distance (MNIST encoder)" in report
    assert "| d2b |" in report and "LPIPS" not in report
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_cli_errors_are_one_line(tmp_path, capsys):
    from advtrain.cli.featspace import main
    from advtrain.cli import run_with_clean_errors
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder: a\nout: b\nstep: 3\n")
    with pytest.raises(SystemExit):
        run_with_clean_errors(lambda: main(["decoder", "--config", str(bad)]), "featspace")
    err = capsys.readouterr().err.strip()
    assert "unknown key step" in err and "\n" not in err


def test_fused_barrier_equals_the_definition_and_its_autograd_gradient():
    """The attack's fused barrier (one saved derivative) gives the value and gradient of
    barrier(ratio(a)) exactly in float64, to float32 precision in float32 (r^200 multiplies r's relative
    error by 200: 200 * 2^-24 = 1.2e-5), across the inside, the explosion and the linear continuation."""
    from advtrain.featspace.bound import bounded_barrier

    g = torch.Generator().manual_seed(0)
    a0 = torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=g)
    b = QuantileBound(a0, torch.zeros(3, 5, 5), torch.ones(3, 5, 5), 0.2)
    for scale in (0.05, 0.3, 5.0):
        a = (a0 + scale * torch.randn(a0.shape, dtype=torch.float64, generator=g)).requires_grad_(True)
        ref = barrier(b.ratio(a))
        (g_ref,) = torch.autograd.grad(ref.sum(), a)
        a64 = a.detach().requires_grad_(True)
        value, r_max = bounded_barrier(b, a64)
        (g64,) = torch.autograd.grad(value.sum(), a64)
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(g64, g_ref, rtol=1e-12, atol=0)
        assert torch.equal(r_max, b.ratio(a.detach()).flatten(1).amax(1))
        a32 = a.detach().float().requires_grad_(True)
        v32, _ = bounded_barrier(b, a32)
        (g32,) = torch.autograd.grad(v32.sum(), a32)
        torch.testing.assert_close(v32.double(), ref.detach(), rtol=2.5e-5, atol=1e-30)
        assert bool(torch.isfinite(g32).all())


def test_stats_command_writes_the_statistics_beside_the_checkpoint(trained_c4, mnist_dm, tmp_path, capsys):
    """``python -m advtrain.featspace stats --ckpt``: the training split's statistics of the checkpoint's
    model, written beside it (the file a suite entry without ``stats`` would fit and cache there)."""
    from advtrain.cli.featspace import main
    from training_helpers import lightning_ckpt

    ckpt = lightning_ckpt(trained_c4.state_dict(), tmp_path / "last.ckpt")
    main(["stats", "--ckpt", str(ckpt)])
    assert "fitted in" in capsys.readouterr().out
    stats = ActivationStats.load(tmp_path / "d2b_stats.safetensors", trained_c4)
    assert stats.layers == PLANES and stats.count == len(mnist_dm.train_set)  # the whole split, default planes
