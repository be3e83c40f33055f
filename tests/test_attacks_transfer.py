"""Transfer attacks (momentum.py, feature_level.py): peer agreement with torchattack, budgets,
honest gradient counts, determinism, layer errors and defaults."""
from __future__ import annotations

from copy import deepcopy

import pytest
import torch

from advtrain.attacks import build_attack
from advtrain.attacks.feature_level import default_layer
from advtrain.models import build_model
from rates import rate_floor

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "net.features.3"
EPS = 0.2  # MNIST budget in the spec's 0.1-0.3 range: white-box success is neither 0 nor 1 for all attacks
N_IMAGES = 48


@pytest.fixture(scope="module")
def images(correct_test_batch):
    return correct_test_batch[0][:N_IMAGES], correct_test_batch[1][:N_IMAGES]


def _run_peer(name: str, model, x, y, **kw):
    """torchattack needs parameters that require grad (its NAA path starts at x * 0) and leaves
    their .grad set: it runs on a copy of the shared model."""
    torchattack = pytest.importorskip("torchattack")
    copy = deepcopy(model)
    for p in copy.parameters():
        p.requires_grad_(True)
    return getattr(torchattack, name)(copy, normalize=None, device=torch.device("cpu"), **kw)(x, y).detach()


# (our attack and options, torchattack class and options): the same settings, torchattack's conventions
PEERS = {
    "mifgsm": (dict(eps=EPS, steps=10, decay=1.0), ("MIFGSM", dict(eps=EPS, steps=10, decay=1.0))),
    # torchattack's NAA: path points x*m/N for m = 0..N-1, no noise, softmax probability, gamma = 1
    "naa": (dict(eps=EPS, steps=10, ens=10, layer=LAYER, noise=0.0, path="torchattack", target="prob", gamma=1.0),
            ("NAA", dict(eps=EPS, steps=10, num_ens=10, feature_layer_cfg=LAYER))),
    # torchattack's FIA: softmax probability (the official code uses the logit), same Bernoulli masks
    "fia": (dict(eps=EPS, steps=10, ens=10, drop=0.3, layer=LAYER, target="prob"),
            ("FIA", dict(eps=EPS, steps=10, num_ens=10, drop_rate=0.3, feature_layer_cfg=LAYER))),
}


@pytest.mark.parametrize("name", list(PEERS))
def test_agrees_with_torchattack(name, trained_c4, images):
    """Same model, images, layer, N, seed and settings: success within 2 points (in practice the same
    images: the updates are identical up to float rounding, which can flip the sign of a ~0 gradient)."""
    ours_opts, (peer_name, peer_opts) = PEERS[name]
    x, y = images
    torch.manual_seed(0)
    ours = build_attack(name, **ours_opts)(trained_c4, x, y)
    torch.manual_seed(0)
    theirs = _run_peer(peer_name, trained_c4, x, y, **peer_opts)
    with torch.no_grad():
        their_success = (trained_c4(theirs).argmax(1) != y).float().mean().item()
    our_success = ours.success.float().mean().item()
    assert abs(our_success - their_success) <= 0.02 + 1e-9, (our_success, their_success)
    same = ((ours.x_adv - theirs).abs() < 1e-5).float().mean().item()
    assert same > 0.99, f"only {same:.3f} of the pixels agree"
    assert 0.0 < our_success < 1.0 or name == "mifgsm"  # a meaningful comparison for the feature attacks


@pytest.mark.parametrize("name, options, grads", [
    ("mifgsm", dict(steps=4), 4),
    ("naa", dict(steps=3, ens=5), 5 + 3),
    ("fia", dict(steps=3, ens=4), 4 + 3),
    ("nrdm", dict(steps=3), 3),
    ("fda", dict(steps=3), 3),
    ("ilpd", dict(steps=3), 3),
    ("mifgsm", dict(steps=3, diversity_prob=1.0, ti_kernel=5, pi_beta=2.5), 3),
    ("naa", dict(steps=2, ens=3, diversity_prob=0.7, ti_kernel=3, pi_beta=2.5, gamma=0.5), 3 + 2),
])
def test_budget_and_honest_gradient_count(name, options, grads, trained_c4, images):
    x, y = images[0][:16], images[1][:16]
    res = build_attack(name, eps=0.1, **options)(trained_c4, x, y)
    assert res.grads == grads
    assert float(res.linf.max()) <= 0.1 + 1e-6
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


@pytest.mark.parametrize("name", ["naa", "fia", "nrdm", "ilpd", "mifgsm"])
def test_deterministic_under_a_seed(name, trained_c4, images):
    """Path noise, pixel drops, NRDM's start, ILPD's noise and DI use the global torch RNG."""
    x, y = images[0][:8], images[1][:8]
    attack = build_attack(name, eps=0.1, steps=2, **({"ens": 3} if name in ("naa", "fia") else {}),
                          **({"diversity_prob": 1.0} if name == "mifgsm" else {}))
    torch.manual_seed(3)
    a = attack(trained_c4, x, y).x_adv
    torch.manual_seed(3)
    b = attack(trained_c4, x, y).x_adv
    torch.manual_seed(4)
    c = attack(trained_c4, x, y).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_path_noise_changes_naa_and_gamma_one_is_linear(trained_c4, images):
    """noise=0 is deterministic; noise>0 is not the same attack."""
    x, y = images[0][:8], images[1][:8]
    quiet = build_attack("naa", eps=0.1, steps=2, ens=4, noise=0.0)
    torch.manual_seed(0)
    a = quiet(trained_c4, x, y).x_adv
    torch.manual_seed(1)
    assert torch.equal(a, quiet(trained_c4, x, y).x_adv)
    torch.manual_seed(0)
    assert not torch.equal(a, build_attack("naa", eps=0.1, steps=2, ens=4, noise=0.1)(trained_c4, x, y).x_adv)


def test_unknown_layer_fails_listing_valid_ones(trained_c4, images):
    with pytest.raises(ValueError, match=r"unknown layer 'net\.features\.9'.*valid layers: .*net\.features\.3"):
        build_attack("naa", eps=0.1, layer="net.features.9")(trained_c4, *[t[:2] for t in images])
    with pytest.raises(ValueError, match="layer must be a module name"):
        build_attack("fia", layer=3)


def test_default_layers():
    assert default_layer(build_model("c4")) == "net.features.3"
    resnet_like = torch.nn.Module()
    for i in range(1, 5):
        resnet_like.add_module(f"layer{i}", torch.nn.Sequential(torch.nn.ReLU()))
    assert default_layer(resnet_like) == "layer2"
    with pytest.raises(ValueError, match="pass layer=NAME"):
        default_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))


def test_refusals(trained_c4, images):
    x, y = images[0][:4], images[1][:4]
    with pytest.raises(ValueError, match="untargeted"):
        build_attack("naa", eps=0.1, steps=1, ens=1)(trained_c4, x, y, (y + 1) % 10)
    with pytest.raises(ValueError, match="no option 'loss'"):
        build_attack("fia", loss="margin")
    for opts, what in [({"ens": 0}, "ens"), ({"path": "reverse"}, "path"), ({"target": "ce"}, "target"),
                       ({"ti_kernel": 4}, "ti_kernel"), ({"diversity_prob": 2.0}, "diversity_prob")]:
        with pytest.raises(ValueError, match=what):
            build_attack("naa", **opts)


def test_targeted_mifgsm_and_ilpd_hit_targets(trained_c4, images):
    x, y = images[0][:16], images[1][:16]
    t = (y + 1) % 10
    for name in ("mifgsm", "ilpd"):
        res = build_attack(name, eps=0.3, steps=10)(trained_c4, x, y, t)
        # white-box, large eps: most targets reached; measured 15/16 (mifgsm) and 14 to 15 of 16 (ilpd)
        # on the C4 of seeds 0 / 1 / 2: the binomial floor of 14/16 for 16 images (rates.py) is 0.63
        assert float(res.success.float().mean()) >= rate_floor(14 / 16, 16), name
