"""Bad inputs to the attack API (issue 24), as a new user makes them: each a clear one-line error
naming what is wrong, or a correct run; nothing silently wrong.

Classes: flags read as truthy strings (one flag check for every boolean option), numpy scalars as
counts, option values that void an attack, the inputs of ``Attack.__call__`` (model, images,
labels), non-finite logits and images never counted as a success (every registered attack), and
the smoother's renamed options. Cheap: random or untrained models, a few images, 1-2 steps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from advtrain.attacks import ATTACKS, Attack, build_attack
from advtrain.defenses import build_defense
from advtrain.evaluation import run_suite
from advtrain.models import build_model
from advtrain.smoothing import LaplacianSmoother
from advtrain.training.inner_attack import build_inner_attack
from featspace_files import untrained_style_pair
from test_bad_inputs import one_line  # the battery's one-line check

pytestmark = pytest.mark.usefixtures("one_thread")
ERRORS = (ValueError, TypeError)
B = 4


@pytest.fixture(scope="module")
def c4() -> nn.Module:
    torch.manual_seed(0)
    return build_model("c4").eval()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 1, 28, 28, generator=g), torch.randint(0, 10, (B,), generator=g)


# ------------------------------------------------------------------ 1. flags: booleans only
NEEDS = {"ifgsm": {"eps": 0.1}}  # options without a default
#: every boolean option of the attacks; 'no' / 'false' would be True under bool()
FLAGS = [("fab_l2", "targeted"), ("fab_linf", "targeted"), ("fmn_l2", "min_growth"), ("fmn_linf", "min_growth"),
         ("pgd_linf", "random_start"), ("pgd_l2", "random_start"), ("ifgsm", "random_start"),
         ("pgd_linf", "early_stop"), ("pgd_l2", "early_stop"), ("qpgd_l2", "random_start"),
         ("fgsm", "quantize"), ("ddn", "eval_mode")]


@pytest.mark.parametrize("value", ["no", "false", 0, None], ids=["no", "false", "0", "None"])
@pytest.mark.parametrize("name,flag", FLAGS, ids=[f"{n}.{f}" for n, f in FLAGS])
def test_a_flag_that_is_not_a_boolean_is_refused(name, flag, value):
    one_line(lambda: build_attack(name, **NEEDS.get(name, {}), **{flag: value}),
             f"{flag} must be true or false, got {type(value).__name__}")


@pytest.mark.parametrize("name,flag", FLAGS[:5], ids=[f"{n}.{f}" for n, f in FLAGS[:5]])
def test_a_numpy_boolean_is_a_flag(name, flag):
    for value in (np.bool_(False), np.bool_(True)):
        attack = build_attack(name, **NEEDS.get(name, {}), **{flag: value})
        assert getattr(attack, flag) is bool(value)


def test_a_string_flag_in_a_suite_is_refused_before_any_attack(c4, images, tmp_path):
    loader = [images]
    suite = [{"attack": "pgd_l2", "options": {"early_stop": "false"}, "budgets": [1.0]}]
    one_line(lambda: run_suite(c4, loader, suite, progress=False, out_dir=tmp_path),
             "early_stop must be true or false, got str 'false'")
    assert not (tmp_path / "results.json").exists()


def test_a_string_flag_in_the_training_attack_options_is_refused():
    """train.py's ``--model.val_attack_options`` / ``attack_options`` reach the same constructor."""
    one_line(lambda: build_inner_attack("pgd_linf", {"eps": 0.3, "random_start": "false"}),
             "random_start must be true or false, got str 'false'")


@pytest.mark.parametrize("value", ["no", 1])
def test_pixel_deflection_use_map_must_be_a_boolean(value):
    one_line(lambda: build_defense("pixel_deflection", use_map=value), "option 'use_map' must be true or false")
    assert build_defense("pixel_deflection", use_map=np.bool_(False)).use_map is False


# ------------------------------------------------------------------ 2. counts: integers, numpy's too
@pytest.mark.parametrize("name,option", [("pgd_l2", "steps"), ("ddn", "steps"), ("fmn_l2", "steps"),
                                         ("apgd_linf", "restarts"), ("square_linf", "queries"),
                                         ("fab_l2", "n_target_classes"), ("deepfool", "candidates")])
def test_numpy_integers_are_counts(name, option, c4, images):
    attack = build_attack(name, **{option: np.int64(2)})
    assert type(getattr(attack, option)) is int and getattr(attack, option) == 2


def test_a_numpy_count_runs(c4, images):
    x, y = images
    res = build_attack("pgd_l2", eps=1.0, steps=np.int64(3), early_stop=False)(c4, x, y)
    assert res.grads == 3


@pytest.mark.parametrize("name,kw,msg", [
    ("pgd_l2", dict(steps=3.0), "steps must be an integer >= 1, got 3.0"),
    ("pgd_l2", dict(steps="3"), "steps must be an integer >= 1, got '3'"),
    ("pgd_l2", dict(steps=np.float64(3)), "steps must be an integer >= 1"),
    ("apgd_linf", dict(seed=1.5), "seed must be an integer, got 1.5"),
    ("square_l2", dict(seed=np.int32(3)), None),
    ("fgsm", dict(eps=np.float32(0.25)), None),
])
def test_numbers_are_python_or_numpy_scalars(name, kw, msg):
    if msg is None:
        attack = build_attack(name, **kw)
        assert all(type(getattr(attack, k)) in (int, float) for k in kw)
    else:
        one_line(lambda: build_attack(name, **kw), msg)


# ------------------------------------------------------------------ 3. values that void an attack
VOID = [
    ("fab_l2", dict(eta=0.9), "eta must lie in [1, inf), got 0.9"),  # stops short of the boundary
    ("fab_linf", dict(eta=0.0), "eta must lie in [1, inf)"),
    ("fab_l2", dict(beta="0.9"), "beta must be a number, got str '0.9'"),
    ("fab_l2", dict(alpha_max=1.5), "alpha_max must lie in [0, 1]"),
    ("fgsm", dict(eps=1.0), "eps (Linf budget) must be < 1, got 1.0"),  # the ball holds the box
    ("ifgsm", dict(eps=2.0), "eps (Linf budget) must be < 1"),
    ("pgd_linf", dict(eps=1.5), "eps (Linf budget) must be < 1"),
    ("apgd_linf", dict(eps=1.0), "eps (Linf budget) must be < 1"),
    ("apgd_t_linf", dict(eps=3.0), "eps (Linf budget) must be < 1"),
    ("square_linf", dict(eps=1.0), "eps (Linf budget) must be < 1"),
    ("mifgsm", dict(eps=1.0), "eps (Linf budget) must be < 1"),
    ("naa", dict(eps=1.0), "eps (Linf budget) must be < 1"),
    ("fmn_l2", dict(gamma_init=0.01, gamma_final=0.05), "gamma_final (0.05) must be <= gamma_init (0.01)"),
    ("fmn_linf", dict(alpha_init=0.1, alpha_final=1.0), "alpha_final (1.0) must be <= alpha_init (0.1)"),
    ("fmn_l2", dict(gamma_init=0.0, gamma_final=0.0), "gamma_init must lie in (0, 1), got 0.0"),  # eps frozen
    ("mifgsm", dict(pi_beta=2.5, pi_kernel=0), "pi_kernel must be an odd integer >= 3, got 0"),  # IndexError
    ("mifgsm", dict(pi_kernel=1), "pi_kernel must be an odd integer >= 3, got 1"),  # 0/0: no neighbour
    ("mifgsm", dict(pi_kernel=4), "pi_kernel must be an odd integer >= 3, got 4"),
    ("mifgsm", dict(ti_kernel=2), "ti_kernel must be 0 (off) or an odd integer >= 1, got 2"),
    ("mifgsm", dict(diversity_prob="0.5"), "diversity_prob must be a number, got str '0.5'"),
    ("mifgsm", dict(resize_rate=1.0), "resize_rate must lie in (1, inf), got 1.0"),
    ("mifgsm", dict(alpha=0.0), "alpha must be > 0 and finite, got 0.0"),
    ("pgd_l2", dict(alpha=-0.1), "alpha must be > 0 and finite, got -0.1"),
    ("apgd_l2", dict(rho=0.0), "rho must lie in (0, 1], got 0.0"),
    ("apgd_l2", dict(momentum=1.5), "momentum must lie in (0, 1], got 1.5"),
    ("square_l2", dict(p_init=0.0), "p_init must lie in (0, 1], got 0.0"),
    ("apgd_t_l2", dict(n_target_classes=0), "n_target_classes must be an integer >= 1, got 0"),
    ("fab_l2", dict(n_target_classes=0), "n_target_classes must be an integer >= 1, got 0"),
    ("alma_l2", dict(rho_growth=1.0), "rho_growth must lie in (1, inf), got 1.0"),
    ("alma_l2", dict(alpha="x"), "alpha must be a number, got str 'x'"),
    ("d2b", dict(barrier_start=0.0), "barrier_start must lie in (0, 1], got 0.0"),
    ("d2b", dict(quantile="0.2"), "quantile must be a number, got str '0.2'"),
    ("fia", dict(drop=1.0), "drop must lie in [0, 1), got 1.0"),  # every pixel dropped
    ("ilpd", dict(coef=0.0), "coef must lie in (0, 1], got 0.0"),
    ("naa", dict(path="fast"), "path must be one of paper, official, torchattack, got 'fast'"),
    ("ddn", dict(gamma=1.0), "gamma must lie in (0, 1), got 1.0"),
    ("bp", dict(gamma_min="0.7"), "gamma_min must be a number, got str '0.7'"),
    ("qpgd_l2", dict(solver="lu"), "solver must be one of auto, dense, cg, got 'lu'"),
    ("scw_l2", dict(cg_steps=0), "cg_steps (CG iterations) must be an integer >= 1, got 0"),
    ("scw_l2", dict(smooth_alpha=1.0), "alpha must lie in [0, 1), got 1.0"),
]


@pytest.mark.parametrize("name,kw,msg", VOID, ids=[f"{n}-{m[:28]}" for n, _, m in VOID])
def test_a_value_that_voids_the_attack_is_refused_at_construction(name, kw, msg):
    one_line(lambda: build_attack(name, **kw), msg)


@pytest.mark.parametrize("name", ["pgd_l2", "apgd_l2", "square_l2"])
def test_an_l2_budget_that_holds_the_whole_box_is_refused(name, c4, images):
    """sqrt(784) = 28 is the box's diameter for 1 x 28 x 28 images (Linf: refused at construction)."""
    x, y = images
    one_line(lambda: build_attack(name, eps=28.0)(c4, x, y), "eps (L2 budget) must be < sqrt(784) = 28")
    assert build_attack(name, eps=27.9, **({"queries": 1} if name.startswith("square") else {"steps": 1}))(
        c4, x, y).x_adv.shape == x.shape


# ------------------------------------------------------------------ 4. the inputs of Attack.__call__
class Returns(nn.Module):
    """The net's logits passed through ``output(logits, x)``: what a wrongly wrapped model returns."""

    def __init__(self, net: nn.Module, output) -> None:
        super().__init__()
        self.net, self.output = net, output

    def forward(self, x):
        return self.output(self.net(x), x)


def _inputs(images):
    x, y = images
    return {
        "empty batch": ((torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), "x is an empty batch"),
        "labels as a list": ((x, y.tolist()), "y must be a tensor of integer labels, got list"),
        "targets as a list": ((x, y, ((y + 1) % 10).tolist()), "targets must be a tensor of integer labels"),
        "labels as floats": ((x, y.float()), "y must be an integer tensor of shape [4], got torch.float32"),
        "labels as booleans": ((x, y > 4), "y must be an integer tensor of shape [4], got torch.bool"),
        "labels of another length": ((x, y[:3]), "y must be an integer tensor of shape [4]"),
        "labels out of range": ((x, torch.full((B,), 10)), "y out of range [0, 10): min 10, max 10"),
        "negative labels": ((x, torch.full((B,), -1)), "y out of range [0, 10)"),
        "targets equal to the labels": ((x, y, y), "targets must differ from the true labels y"),
        "images above 1": ((x * 255, y), "x must lie in [0, 1] (pixel space)"),
        "images below 0": ((x - 0.5, y), "x must lie in [0, 1] (pixel space)"),
        "NaN images": ((torch.full_like(x, float("nan")), y), "x contains NaN"),
        "integer images": (((x * 255).to(torch.uint8), y), "x must be a floating-point tensor"),
        "images as an array": ((x.numpy(), y), "x must be a floating-point tensor of images in [0, 1], got ndarray"),
        "flat images": ((x.flatten(1), y), "x must be a batch of images NCHW (4-D), got shape (4, 784)"),
        "RGB images": ((x.expand(-1, 3, -1, -1), y),
                       "the images have 3 channels, the model's first convolution takes 1"),
        "float64 images": ((x.double(), y), "the images are torch.float64 but the model's weights are torch.float32"),
    }


INPUTS = list(_inputs((torch.zeros(B, 1, 28, 28), torch.zeros(B, dtype=torch.long))))


@pytest.mark.parametrize("attack", ["pgd_l2", "ddn", "square_linf"])
@pytest.mark.parametrize("case", INPUTS)
def test_a_bad_input_to_an_attack_is_one_line(case, attack, c4, images):
    args, msg = _inputs(images)[case]
    att = build_attack(attack, **({"queries": 2} if attack == "square_linf" else {"steps": 2}))
    one_line(lambda: att(c4, *args), msg)


MODELS = {
    "a plain function": (lambda net: (lambda x: net(x)), "model must be a torch.nn.Module, got function"),
    "a tuple": (lambda net: Returns(net, lambda out, x: (out, x)),
                "the model must return a logits tensor [B, classes], got tuple"),
    "a flat vector": (lambda net: Returns(net, lambda out, x: out.flatten()),
                      "the model must return logits of shape [4, classes], got (40,)"),
    "another batch size": (lambda net: Returns(net, lambda out, x: out[:1]),
                           "the model must return logits of shape [4, classes], got (1, 10)"),
    "weights on another device": (lambda net: build_model("c4").to("meta"),
                                  "the images are on cpu but the model is on meta"),
}


@pytest.mark.parametrize("attack", ["fgsm", "fmn_l2", "square_l2"])
@pytest.mark.parametrize("case", list(MODELS))
def test_a_bad_model_for_an_attack_is_one_line(case, attack, c4, images):
    wrap, msg = MODELS[case]
    opts = {"queries": 2} if attack == "square_l2" else {} if attack == "fgsm" else {"steps": 2}
    att = build_attack(attack, **opts)
    one_line(lambda: att(wrap(c4), *images), msg)


def test_a_float64_model_that_promotes_float32_images_is_a_correct_run(images):
    """Normalize's float64 buffers promote the images: the model runs in float64, the attack in the
    images' dtype (run_suite refuses the mismatch up front; the attack API need not)."""
    torch.manual_seed(0)
    model = build_model("c4").double().eval()
    x, y = images
    res = build_attack("pgd_l2", eps=3.0, steps=2)(model, x, y)
    assert res.x_adv.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)


# ------------------------------------------------------------------ 5. non-finite is never a success
class NonFinite(nn.Module):
    """The C4 with every logit replaced by ``value`` (NaN or inf), gradients NaN too."""

    def __init__(self, net: nn.Module, value: float) -> None:
        super().__init__()
        self.net, self.value = net, value

    def forward(self, x):
        out = self.net(x)
        return out * 0 + self.value


#: the cheapest options of every registered attack (the registry's canonical names)
CHEAP = {"alma_l2": dict(steps=2, check_steps=1), "cw_l2": dict(steps=2, search_steps=1),
         "scw_l2": dict(steps=2, search_steps=1), "square_linf": dict(queries=2), "square_l2": dict(queries=2),
         "fgsm": {}, "naa": dict(steps=1, ens=1), "fia": dict(steps=1, ens=1), "deepfool": dict(steps=2),
         "fab_l2": dict(steps=2), "fab_linf": dict(steps=2), "bp": dict(steps=2, line_search_steps=1),
         "apgd_l1": dict(steps=3), "apgd_t_l1": dict(steps=3)}  # l1-APGD: 3 stages of eps


def _cheap(name: str) -> Attack:
    cls = ATTACKS[name]
    kw = CHEAP.get(name, {"steps": 2})
    if name == "fsa":
        kw = {**kw, **untrained_style_pair()}
    return cls(**kw)


@pytest.mark.filterwarnings("ignore:d2b without stats")
@pytest.mark.parametrize("name", ATTACKS.canonical())
def test_nan_logits_are_never_a_success(name, c4, images):
    """A model that says nothing (NaN logits) is not fooled: ``argmax`` of a NaN row is the first NaN's
    class, so without the rule every image of another label counted as adversarial."""
    x, y = images
    y = torch.full_like(y, 3)  # never class 0, argmax's pick for an all-NaN row
    try:
        res = _cheap(name)(NonFinite(c4, float("nan")), x, y)
    except ERRORS as e:  # an attack may refuse such a model: then in one line
        assert "\n" not in str(e).strip(), str(e)
        return
    assert not bool(res.success.any()), f"{name}: NaN logits counted as a success"


@pytest.mark.parametrize("name", ["pgd_l2", "apgd_l2", "fmn_l2", "square_l2", "ddn", "fab_linf"])
def test_infinite_logits_are_never_a_success(name, c4, images):
    x, y = images
    res = _cheap(name)(NonFinite(c4, float("inf")), x, torch.full_like(y, 3))
    assert not bool(res.success.any())


class ReturnsNaN(Attack):
    """An attack whose images are NaN on the first half of the batch, the clean images elsewhere."""

    name = "returns_nan"

    def _run(self, ctx):
        out = ctx.x.clone()
        out[: len(out) // 2] = float("nan")
        return out


def test_a_nan_image_is_never_a_success(images):
    """A model that maps NaN images to class 1 would be 'fooled' by them; they are not adversarials."""
    class NaNToOne(nn.Module):
        def forward(self, x):
            nan = torch.isnan(x).flatten(1).any(1)
            return torch.stack([(~nan).float(), nan.float()], 1) * 5
    x, _ = images
    res = ReturnsNaN()(NaNToOne(), x, torch.zeros(B, dtype=torch.long))
    assert res.success.tolist() == [False] * B


def test_finite_logits_still_succeed(c4, images):
    """The rule removes nothing else: the same success mask as the predictions on finite logits."""
    x, y = images
    res = build_attack("pgd_l2", eps=3.0, steps=3)(c4, x, y)
    with torch.no_grad():
        assert torch.equal(res.success, c4(res.x_adv).argmax(1) != y)


# ------------------------------------------------------------------ 6. the smoother's options
@pytest.mark.parametrize("kw,msg", [
    (dict(iters=200), "LaplacianSmoother: option 'iters' was renamed to 'cg_steps'"),
    (dict(cg_iters=200), "LaplacianSmoother: option 'cg_iters' was renamed to 'cg_steps'"),
    (dict(kernel="gaussian"), "LaplacianSmoother has no option 'kernel'; valid options: alpha, solver, cg_steps"),
    (dict(sigma_f="0.1"), "sigma_f must be a number, got str '0.1'"),
    (dict(neighbours=6), "neighbours must be one of [4, 8], got 6"),
    (dict(cg_steps=2.5), "cg_steps (CG iterations) must be an integer >= 1, got 2.5"),
])
def test_a_bad_smoother_option_is_one_line(kw, msg):
    one_line(lambda: LaplacianSmoother(torch.rand(1, 1, 8, 8), 0.9, **kw), msg)


@pytest.mark.parametrize("name", ["qpgd_l2", "scw_l2"])
def test_a_smooth_attack_checks_its_graph_options_at_construction(name):
    one_line(lambda: build_attack(name, graph={"iters": 3}), f"{name}: graph: option 'iters' was renamed")
    one_line(lambda: build_attack(name, graph={"feature_kernel": "box"}), "feature_kernel must be one of")
    one_line(lambda: build_attack(name, graph="laplacian"), "graph must be a dict of image_graph options")


# ------------------------------------------------------------------ 7. defense options name the option
@pytest.mark.parametrize("name,kw,msg", [
    ("median", dict(size="abc"), "option 'size' must be an integer, got str 'abc'"),
    ("median", dict(size=1), "size must be an integer >= 2, got 1"),
    ("bit_depth", dict(bits=9), "bits must be an integer in 1..8, got 9"),
    ("bit_depth", dict(bits=2.5), "option 'bits' must be an integer, got float 2.5"),
    ("pixel_deflection", dict(window=0), "window must be an integer >= 1, got 0"),
    ("pixel_deflection", dict(deflections=-1), "deflections must be an integer >= 0, got -1"),
    ("pixel_deflection", dict(sigma="a"), "option 'sigma' must be a number, got str 'a'"),
    ("bilateral", dict(radius=0), "radius must be an integer >= 1, got 0"),
    ("bilateral", dict(sigma_r=0.0), "sigma_r must be > 0 and finite, got 0.0"),
])
def test_a_bad_defense_option_names_it(name, kw, msg):
    one_line(lambda: build_defense(name, **kw), msg)
