"""The training objectives (model.loss) and AWP against independent computations: ART's trainers
(TRADES, AWP) on the same batch, model and adversarial examples, the papers' formulas (MART, TRADES'
KL-PGD), and their bad inputs."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import build_attack
from advtrain.models import build_model
from advtrain.training import AdversarialTrainingModule
from advtrain.training.awp import WeightPerturbation, perturbed_weights
from advtrain.training.objectives import MART, Trades
from advtrain.training.trades_attack import kl_variant

art = pytest.importorskip("art")  # a test extra (Makefile PEERS)
from art.attacks.attack import EvasionAttack  # noqa: E402
from art.defences.trainer import AdversarialTrainerAWPPyTorch, AdversarialTrainerTRADESPyTorch  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

# float32 sums over a batch of 16 and 10 classes: agreement to ~1e-6 relative; the margin is 10x that
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    return x, y


def c4(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("c4", num_classes=10)


class FixedAttack(EvasionAttack):
    """An ART attack that returns given adversarial examples: ART's trainer then sees our x_adv."""

    attack_params: list = []
    _estimator_requirements = ()

    def __init__(self, estimator, x_adv: np.ndarray) -> None:
        super().__init__(estimator=estimator)
        self.x_adv = x_adv

    def generate(self, x, y=None, **kwargs):
        return self.x_adv


def art_classifier(model: nn.Module, lr: float) -> PyTorchClassifier:
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                             optimizer=torch.optim.SGD(model.parameters(), lr=lr), clip_values=(0.0, 1.0),
                             device_type="cpu")


def our_step(model, objective, x, x_adv, y, lr, awp=None) -> float:
    """What AdversarialTrainingModule does per batch (training_step, on_after_backward, SGD step)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    if awp is not None:
        awp.perturb(model, lambda: objective(model, x, x_adv, y)[0])
    loss = objective(model, x, x_adv, y)[0]
    loss.backward()
    if awp is not None:
        awp.restore()
    opt.step()
    return float(loss.detach())


def assert_same_weights(a: nn.Module, b: nn.Module, rtol=RTOL, atol=ATOL) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=name)


def pgd_examples(model, x, y, trades: bool):
    attack = build_attack("pgd_linf", eps=0.3, steps=5, alpha=0.1)
    torch.manual_seed(1)
    return (kl_variant(attack) if trades else attack)(model, x, y).x_adv


# ---------------------------------------------------------------- TRADES
def test_trades_loss_and_update_equal_arts(batch):
    x, y = batch
    ours, theirs = c4(), c4()
    x_adv = pgd_examples(ours, x, y, trades=True)
    moved = [p.detach().clone() for p in ours.parameters()]
    loss = our_step(ours, Trades(beta=6.0), x, x_adv, y, lr=0.1)
    clf = art_classifier(theirs, lr=0.1)
    trainer = AdversarialTrainerTRADESPyTorch(clf, FixedAttack(clf, x_adv.numpy()), beta=6.0)
    art_loss, _, n = trainer._batch_process(x.numpy(), y.numpy())
    assert loss == pytest.approx(art_loss / n, rel=RTOL)
    assert_same_weights(ours, theirs)
    assert any(not torch.equal(a, b) for a, b in zip(moved, ours.parameters()))  # the step moved the weights


def test_trades_inner_attack_is_the_papers_kl_pgd(batch):
    """Zhang et al.'s Alg. 1 written out: x' = x + 0.001 N(0, 1); x' <- clip(proj(x' + a sign grad KL))."""
    x, y = batch
    model = c4().eval()
    x_adv = pgd_examples(model, x, y, trades=True)
    torch.manual_seed(1)
    p_clean = F.softmax(model(x), 1).detach()
    xa = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    for _ in range(5):
        xa.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(xa), 1), p_clean, reduction="sum")
        (g,) = torch.autograd.grad(kl, xa)
        xa = torch.min(torch.max(xa.detach() + 0.1 * g.sign(), x - 0.3), x + 0.3).clamp(0, 1)
    torch.testing.assert_close(x_adv, xa, rtol=0, atol=1e-6)
    assert float((x_adv - x).abs().max()) == pytest.approx(0.3, abs=1e-6)  # the KL did push to the budget


def test_trades_with_beta_zero_is_clean_training(batch):
    x, y = batch
    model = c4()
    loss, _ = Trades(beta=0.0)(model, x, torch.rand_like(x), y)
    assert float(loss) == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)


# ---------------------------------------------------------------- MART
def test_mart_equals_its_formula(batch):
    """Wang et al. 2020 eq. 9 computed per image in float64 with explicit loops."""
    x, y = batch
    model = c4()
    x_adv = pgd_examples(model, x, y, trades=False)
    loss, _ = MART(beta=6.0)(model, x, x_adv, y)
    pc = F.softmax(model(x).double(), 1).detach().numpy()
    pa = F.softmax(model(x_adv).double(), 1).detach().numpy()
    terms = []
    for i, t in enumerate(y.tolist()):
        other = max(pa[i, k] for k in range(10) if k != t)
        bce = -np.log(pa[i, t]) - np.log(1 - other)
        kl = sum(pc[i, k] * np.log(pc[i, k] / pa[i, k]) for k in range(10))
        terms.append(bce + 6.0 * kl * (1 - pc[i, t]))
    assert float(loss) == pytest.approx(float(np.mean(terms)), rel=RTOL)


def test_mart_gradient_flows_through_the_clean_weight(batch):
    """The (1 - p_y(x)) weight is not detached (as in the authors' code): beta changes the clean logits' gradient."""
    x, y = batch
    model = c4()
    x_adv = pgd_examples(model, x, y, trades=False)
    grads = []
    for beta in (0.0, 6.0):
        model.zero_grad()
        MART(beta)(model, x, x_adv, y)[0].backward()
        grads.append(model.net.classifier.weight.grad.clone() if hasattr(model, "net") else
                     next(model.parameters()).grad.clone())
    assert not torch.allclose(*grads)


# ---------------------------------------------------------------- AWP
@pytest.mark.parametrize("mode", ["pgd", "trades"])
def test_awp_step_equals_arts(batch, mode):
    """ART's AWP (proxy copy, one SGD ascent step, layer-wise scaling to gamma ||w_l||); proxy lr 1 makes its
    1e-8 in the scale the same as ours."""
    from advtrain.training.objectives import Mix
    x, y = batch
    ours, theirs = c4(), c4()
    x_adv = pgd_examples(ours, x, y, trades=mode == "trades")
    objective = Mix(adv_weight=1.0) if mode == "pgd" else Trades(beta=6.0)
    loss = our_step(ours, objective, x, x_adv, y, lr=0.1, awp=WeightPerturbation(0.01))
    clf = art_classifier(theirs, lr=0.1)
    proxy = art_classifier(copy.deepcopy(theirs), lr=1.0)
    trainer = AdversarialTrainerAWPPyTorch(clf, proxy, FixedAttack(clf, x_adv.numpy()), mode=mode, gamma=0.01,
                                           beta=6.0, warmup=0)
    trainer._apply_wp = True
    art_loss, _, n = trainer._batch_process(x.numpy(), y.numpy())
    assert loss == pytest.approx(art_loss / n, rel=RTOL)
    # ART subtracts v after the step, we copy w back before it: the same update up to float rounding of w + v - v
    assert_same_weights(ours, theirs)
    plain = c4()
    our_step(plain, objective, x, x_adv, y, lr=0.1)
    assert not torch.allclose(plain.net.classifier.weight, ours.net.classifier.weight, rtol=RTOL, atol=ATOL), \
        "AWP made no difference: the comparison above would not see a wrong perturbation"


def test_awp_restores_the_weights_exactly(batch):
    x, y = batch
    model = c4()
    before = copy.deepcopy(model.state_dict())
    awp = WeightPerturbation(5e-3)
    awp.perturb(model, lambda: F.cross_entropy(model(x), y))
    for name, p in perturbed_weights(model):  # ||v_l|| = gamma ||w_l||, layer by layer
        v = p.detach() - before[name]
        assert float(v.norm()) == pytest.approx(5e-3 * float(before[name].norm()), rel=1e-3), name
    awp.restore()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not awp.active


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, message", [
    (dict(loss="trade", attack="pgd_linf"), "unknown training loss 'trade'"),
    (dict(loss="trades", loss_options={"beta": -1}, attack="pgd_linf"), "beta must be a number >= 0"),
    (dict(loss="mart", loss_options={"beta": "6"}, attack="pgd_linf"), "beta must be a number >= 0"),
    (dict(loss="trades", loss_options={"gamma": 1}, attack="pgd_linf"), "has no option 'gamma'"),
    (dict(loss="trades"), "needs an inner attack"),
    (dict(loss="trades", attack="fgsm"), "must be pgd_linf, ifgsm or pgd_l2"),
    (dict(loss="trades", attack="pgd_linf", attack_options={"loss": "dlr"}), "drop attack option"),
    (dict(loss="gradalign", attack="pgd_l2"), "Linf ball"),
    (dict(loss="mix", loss_options={"beta": 1}, attack="fgsm"), "model.adv_weight"),
    (dict(awp_gamma=0.0, attack="pgd_linf"), r"awp_gamma .* must lie in \(0, 1\)"),
    (dict(awp_gamma=1.5, attack="pgd_linf"), r"must lie in \(0, 1\)"),
    (dict(awp_gamma=5e-3), "awp_gamma needs an inner attack"),
    (dict(attack="nfgsm", attack_options={"steps": 3}), "has no option 'steps'"),
    (dict(attack="pgd_lnf"), "unknown attack 'pgd_lnf'.*nfgsm"),
])
def test_bad_training_options_are_one_line_errors(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        AdversarialTrainingModule(**kw)
    assert "\n" not in str(err.value)
