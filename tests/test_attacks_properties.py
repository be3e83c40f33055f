"""Properties every registered attack must have (the attack protocol of DESIGN.md / issue 3).

Iterates over ``ATTACKS.canonical()``, so attacks added later are covered automatically; each gets
a small-cost configuration (``CHEAP`` or the generic fallback ``GENERIC``).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advtrain.attacks import ATTACKS, build_attack
from advtrain.ops.norms import NORMS, l2_norm, linf_norm
from advtrain.registry import valid_options

from featspace_files import untrained_style_pair

NAMES = ATTACKS.canonical()
#: per-attack small-cost options for these tests
CHEAP: dict[str, dict] = {
    "fgsm": {"eps": 0.1},
    "ifgsm": {"eps": 0.1, "steps": 3},
    "pgd_linf": {"eps": 0.1, "steps": 3},
    "pgd_l2": {"eps": 1.0, "steps": 3},
    "deepfool": {"steps": 3, "candidates": 3},
    "ddn": {"steps": 3},
    "bp": {"steps": 3},
    "cw_l2": {"steps": 3, "search_steps": 1},
    "scw_l2": {"steps": 2, "search_steps": 1, "solver": "cg", "cg_steps": 5},
    "qpgd_l2": {"eps": 1.0, "steps": 2, "solver": "cg", "cg_steps": 5},
    "apgd_linf": {"eps": 0.1, "steps": 3},
    "apgd_l2": {"eps": 1.0, "steps": 3},
    "apgd_t_linf": {"eps": 0.1, "steps": 3, "n_target_classes": 2},
    "apgd_t_l2": {"eps": 1.0, "steps": 3, "n_target_classes": 2},
    "apgd_l1": {"eps": 5.0, "steps": 3},
    "apgd_t_l1": {"eps": 5.0, "steps": 3, "n_target_classes": 2},
    "square_linf": {"eps": 0.1, "queries": 10},
    "square_l2": {"eps": 1.0, "queries": 10},
    "d2b": {"steps": 3},  # no stats: the attacked batch's (a warning), fine for the protocol's properties
    "fsa": {"steps": 3, **untrained_style_pair()},
}
#: generic fallback, filtered by the options each attack accepts
GENERIC = {"steps": 3, "binary_search_steps": 1, "search_steps": 1, "iterations": 3, "max_iter": 3,
           "cg_steps": 5, "candidates": 3}


def cheap(name: str, **extra) -> dict:
    opts = CHEAP.get(name)
    if opts is None:
        valid = valid_options(ATTACKS[name])
        opts = {k: v for k, v in GENERIC.items() if k in valid}
    return {**opts, **extra}


def tiny_model(seed: int = 0) -> nn.Module:
    """Untrained small CNN with BatchNorm and Dropout (mode matters) and logits output."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.1), nn.Linear(8 * 8 * 8, 10))


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return tiny_model()


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.round(torch.rand(n, 1, 28, 28, generator=g) * 255) / 255  # 8-bit images
    return x, torch.randint(0, 10, (n,), generator=g)


def run(attack, model, x, y, targets=None):
    return attack(model, x, y) if targets is None else attack(model, x, y, targets)


def check_result(name: str, attack, model: nn.Module, x, y, res, targets=None) -> None:
    """The protocol's properties of an AttackResult, recomputed from the returned images."""
    x_adv = res.x_adv
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert bool(torch.isfinite(x_adv).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    if attack.quantize:
        assert float((x_adv * 255 - torch.round(x_adv * 255)).abs().max()) < 1e-4, "not on the 1/255 grid"
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    model.train(was_training)
    expected = pred != y if targets is None else pred == targets
    assert torch.equal(res.success, expected), "success mask differs from the returned images' predictions"
    delta = (x_adv - x).detach()
    torch.testing.assert_close(res.l2, l2_norm(delta))
    torch.testing.assert_close(res.linf, linf_norm(delta))
    assert isinstance(res.grads, int) and res.grads >= (1 if type(attack).uses_gradients else 0)
    if not type(attack).uses_gradients:  # score-based: only forward queries
        assert res.grads == 0 and res.queries >= 1
    if type(attack).family == "distortion":
        eps, norm = attack.eps, type(attack).norm
        measured = NORMS[norm](delta)
        slack = 1e-5 * max(eps, 1.0)
        if attack.quantize and norm != "l1":  # rounding may move each pixel by half a level (L1: into the ball)
            slack += 0.5 / 255 * (1.0 if norm == "linf" else math.sqrt(x[0].numel()))
        assert float(measured.max()) <= eps + slack, f"{name} exceeds its {norm} budget {eps}"
    else:  # success-targeted: a sample never found adversarial is returned unchanged
        failed = ~res.success
        assert torch.equal(x_adv[failed], x[failed])


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_protocol_on_untrained_model(name, quantize, tiny):
    """Train-mode model with some frozen parameters: outputs valid, mode and flags restored."""
    model = tiny.train()
    model[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x, y = batch(6)
    attack = build_attack(name, quantize=quantize, **cheap(name))
    res = attack(model, x, y)
    assert all(m.training for m in model.modules()), "train mode not restored"
    assert [p.requires_grad for p in model.parameters()] == flags, "requires_grad not restored"
    assert all(p.grad is None for p in model.parameters()), "a parameter received a gradient"
    check_result(name, attack, model, x, y, res)
    model[0].weight.requires_grad_(True)


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_protocol_on_trained_c4(name, quantize, trained_c4, correct_test_batch):
    x, y = correct_test_batch[0][:12], correct_test_batch[1][:12]
    for p in trained_c4.parameters():  # the session model is shared: peers' tests may leave .grad
        p.grad = None
    flags = [p.requires_grad for p in trained_c4.parameters()]
    attack = build_attack(name, quantize=quantize, **cheap(name))
    res = attack(trained_c4, x, y)
    assert not trained_c4.training
    assert all(p.grad is None for p in trained_c4.parameters()), "a parameter received a gradient"
    assert [p.requires_grad for p in trained_c4.parameters()] == flags
    check_result(name, attack, trained_c4, x, y, res)


@pytest.mark.parametrize("name", NAMES)
def test_targeted_or_clear_refusal(name, trained_c4, correct_test_batch):
    """Targeted mode: success means 'predicted as the target'. Only attacks that declare
    ``supports_targets = False`` may refuse targets, and they must (no escape hatch for the others)."""
    x, y = correct_test_batch[0][:8], correct_test_batch[1][:8]
    targets = (y + 1) % 10
    attack = build_attack(name, **cheap(name))
    if not type(attack).supports_targets:
        with pytest.raises(ValueError, match="untargeted"):
            attack(trained_c4, x, y, targets)
        return
    res = attack(trained_c4, x, y, targets)
    check_result(name, attack, trained_c4, x, y, res, targets)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", NAMES)
def test_works_under_caller_grad_contexts(name, context, tiny):
    model = tiny.eval()
    attack = build_attack(name, **cheap(name))
    ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with ctx:
        x, y = batch(4, seed=1)
        res = attack(model, x, y)
    check_result(name, attack, model, x.clone(), y.clone(), res)


@pytest.mark.parametrize("n", [1, 257])
@pytest.mark.parametrize("name", NAMES)
def test_batch_sizes(name, n, tiny):
    model = tiny.eval()
    x, y = batch(n, seed=2)
    attack = build_attack(name, **cheap(name))
    res = attack(model, x, y)
    assert res.success.shape == (n,) and res.l2.shape == (n,)
    check_result(name, attack, model, x, y, res)


# ---------------------------------------------------------------- bad input: clear errors

BAD_INPUTS = {
    "above one": (lambda x, y: (x * 2 + 0.1, y), "[0, 1]"),
    "negative": (lambda x, y: (x - 0.5, y), "[0, 1]"),
    "nan": (lambda x, y: (x.masked_fill(x > 0.5, float("nan")), y), "NaN"),
    "rank 3": (lambda x, y: (x[:, 0], y), "4-D"),
    "label out of range": (lambda x, y: (x, torch.full_like(y, 10)), "out of range"),
    "negative label": (lambda x, y: (x, torch.full_like(y, -1)), "out of range"),
    "float labels": (lambda x, y: (x, y.float()), "integer"),
    "label count": (lambda x, y: (x, y[:-1]), "shape"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_refused(name, case, tiny):
    make, message = BAD_INPUTS[case]
    x, y = make(*batch(3))
    with pytest.raises(ValueError, match=message):
        build_attack(name, **cheap(name))(tiny.eval(), x, y)


@pytest.mark.parametrize("name", NAMES)
def test_probability_model_is_refused(name, tiny):
    model = nn.Sequential(tiny.eval(), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="probabilities"):
        build_attack(name, **cheap(name))(model, *batch(3))


@pytest.mark.parametrize("name", [n for n in NAMES if "eps" in valid_options(ATTACKS[n])])
@pytest.mark.parametrize("eps", [-0.1, float("nan")])
def test_negative_budget_is_refused(name, eps):
    with pytest.raises(ValueError, match="eps"):
        build_attack(name, eps=eps)


@pytest.mark.parametrize("name, options", [
    ("ddn", {"steps": 0}), ("ddn", {"gamma": 1.5}), ("ddn", {"init_norm": -1.0}),
    ("bp", {"steps": 0}), ("bp", {"gamma_min": 1.0}), ("bp", {"alpha": -2.0}), ("bp", {"variant": "paper"}),
    ("deepfool", {"candidates": 0}), ("deepfool", {"overshoot": -0.1}),
])
def test_bad_hyper_parameters_are_refused(name, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        build_attack(name, **options)


def test_unknown_attack_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown attack 'nope'.*bp.*ddn.*deepfool"):
        build_attack("nope")


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_lists_valid_ones(name):
    with pytest.raises(ValueError, match="no option 'bogus'; valid options: .*quantize"):
        build_attack(name, bogus=1)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown attack loss 'hinge'"):
        build_attack("bp", loss="hinge")


def test_success_is_measured_when_read_and_refused_on_a_changed_model():
    """FGSM's call costs its one forward+backward (the logits are checked on it); the success
    forward runs when ``success`` is first read, once; after an optimizer step reading it raises."""
    model = tiny_model(1).eval()
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x, y = batch(16)
    res = build_attack("fgsm", eps=0.1)(model, x, y)
    assert calls == [16]
    first = res.success
    assert calls == [16, 16] and torch.equal(res.success, first) and calls == [16, 16]
    hook.remove()
    with torch.no_grad():
        assert torch.equal(first, model(res.x_adv).argmax(1) != y)

    late = build_attack("fgsm", eps=0.1)(model, x, y)
    with torch.no_grad():
        model[-1].weight.add_(0.01)  # any in-place update of a parameter, as an optimizer step does
    with pytest.raises(RuntimeError, match="model changed"):
        late.success


@pytest.mark.parametrize("name", ["pgd_l2", "ddn", "bp"])
def test_inner_loop_attacks_under_bf16_autocast(name, trained_c4, correct_test_batch):
    """Training with bf16-mixed precision runs the attack under autocast: the losses are taken in fp32
    (losses.py casts the logits), images stay float32 in the box, and the result is that of fp32."""
    x, y = correct_test_batch[0][:32], correct_test_batch[1][:32]
    attack = build_attack(name, quantize=True, **({"eps": 2.0} if name == "pgd_l2" else {}))
    ref = attack(trained_c4, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = attack(trained_c4, x, y)
        check_result(name, attack, trained_c4, x, y, res)
    assert res.x_adv.dtype == torch.float32
    assert abs(float(res.success.float().mean()) - float(ref.success.float().mean())) <= 0.1
    both = res.success & ref.success
    assert float(res.l2[both].mean()) == pytest.approx(float(ref.l2[both].mean()), rel=0.1)
