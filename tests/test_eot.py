"""Randomized models (issue 20 item 6): detected up front, attacked with EOT (the gradient averaged
over draws, every draw counted), scored over draws (robust only if every draw survives)."""
import pytest
import torch
from torch import nn

from advtrain.attacks import build_attack
from advtrain.attacks.base import AttackContext
from advtrain.defenses import build_defense
from advtrain.defenses.defended import Defended
from advtrain.defenses.eot import EOT, misclassified, plan_draws, randomness
from advtrain.evaluation import run_suite
from advtrain.evaluation.report import write_report


class Linear(nn.Module):
    """A deterministic linear classifier on 1x4x4 images."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(16, classes)
        torch.nn.init.normal_(self.fc.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.fc(x.flatten(1))


class Noisy(nn.Module):
    """A randomized model that does not declare it: multiplicative input noise, then a linear map;
    ``grad_calls`` counts the calls that build a graph (a forward+backward pass each)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Linear()
        self.grad_calls = 0

    def forward(self, x):
        self.grad_calls += int(torch.is_grad_enabled() and x.requires_grad)
        return self.net(x * (1 + 0.5 * torch.randn_like(x)))


class Scripted(nn.Module):
    """Predicts class 0 for every image, except image 0 on the third call (class 1): one bad draw."""

    randomized = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        logits = torch.zeros(len(x), 2)
        logits[:, 0] = 1.0
        if self.calls == 3:
            logits[0] = torch.tensor([0.0, 1.0])
        return logits


@pytest.fixture
def x():
    return torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def test_detection_deterministic_model_gets_no_eot(x):
    model = Linear().eval()
    assert randomness(model, x) is None
    assert plan_draws(model, model, x) == {"randomized": None, "eot_samples": 1, "score_draws": 1}


def test_detection_randomized_models_get_eot(x):
    assert randomness(Noisy(), x) == "two forwards differ"  # undeclared: found by two forwards
    pd = Defended(Linear(), build_defense("pixel_deflection", deflections=5, window=1))
    assert randomness(pd, x) == "declared"
    view = pd.attack_view("bpda")  # the BPDA view still draws at random in its forward
    assert plan_draws(pd, view, x) == {"randomized": "declared", "eot_samples": 20, "score_draws": 10}
    assert plan_draws(pd, view, x, eot_samples=3, score_draws=2) == {"randomized": "declared", "eot_samples": 3,
                                                                     "score_draws": 2}
    # black-box view: the attacks see the bare deterministic model, no EOT; scoring still over draws
    assert plan_draws(pd, pd.attack_view("blackbox"), x) == {"randomized": "declared", "eot_samples": 1,
                                                             "score_draws": 10}
    with pytest.raises(ValueError, match="eot_samples"):
        plan_draws(pd, view, x, eot_samples=0)


def _per_draw_and_eot(x, k, per_draw_grad, eot_grad):
    """The K per-draw gradients, one draw at a time, and EOT's on the same random numbers."""
    torch.manual_seed(5)
    per_draw = [per_draw_grad(x.clone().requires_grad_(True)) for _ in range(k)]
    torch.manual_seed(5)
    return per_draw, eot_grad(x.clone().requires_grad_(True))


def test_eot_loss_gradient_is_the_mean_of_the_per_draw_loss_gradients(x):
    """What APGD, FMN, DDN, BP, PGD get (``AttackContext.loss_and_grad``): the mean over draws of the
    per-draw cross-entropy gradients (AutoAttack's EOT), not the gradient at the mean logits."""
    model, k = Noisy(), 7
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ce = build_attack("pgd_l2", eps=1.0).loss_fn

    def one(xr):
        return torch.autograd.grad(ce(model(xr), y, None).sum(), xr)[0]

    def eot(xr):
        return AttackContext(EOT(model, k), xr.detach(), y, None, ce).loss_and_grad(xr)[2]

    per_draw, g = _per_draw_and_eot(x, k, one, eot)
    torch.testing.assert_close(g, torch.stack(per_draw).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per_draw[0], per_draw[1])  # the draws do differ


def test_eot_forward_gradient_is_the_mean_of_the_per_draw_gradients(x):
    """What attacks with objectives of their own (FAB, C&W, ALMA) get through the forward: the mean of
    the per-draw gradients of <g, logits> (the vector-Jacobian product their objective reaches x by)."""
    model, k = Noisy(), 7
    g = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(2))
    per_draw, eot = _per_draw_and_eot(x, k, lambda xr: torch.autograd.grad((model(xr) * g).sum(), xr)[0],
                                      lambda xr: torch.autograd.grad((EOT(model, k)(xr) * g).sum(), xr)[0])
    torch.testing.assert_close(eot, torch.stack(per_draw).mean(0), rtol=1e-5, atol=1e-6)


def test_grads_count_every_draw(x):
    """grads = the forward+backward passes the model really ran: K per EOT gradient."""
    y = torch.zeros(len(x), dtype=torch.long)
    pgd = build_attack("pgd_l2", eps=1.0, steps=5, early_stop=False)
    plain = Noisy()
    base = pgd(plain, x, y).grads
    assert base == plain.grad_calls == 5
    noisy = Noisy()
    res = pgd(EOT(noisy, 4), x, y)
    assert res.grads == noisy.grad_calls == 4 * base


def test_scoring_counts_an_image_robust_only_if_it_survives_every_draw():
    model, x, y = Scripted(), torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long)
    assert misclassified(model, x, y, draws=2).tolist() == [False, False, False]  # draw 3 not reached
    model.calls = 0
    assert misclassified(model, x, y, draws=5).tolist() == [True, False, False]  # one bad draw of five


def test_run_suite_attacks_pixel_deflection_with_eot_and_names_it(trained_c4, mnist_dm, tmp_path):
    suite = [{"attack": "pgd_l2", "options": {"steps": 3, "early_stop": False}, "budgets": [2.0]}]
    defended = Defended(trained_c4, build_defense("pixel_deflection"))
    res = run_suite(defended, mnist_dm.test_dataloader(), suite, n=8, quantize="no", progress=False)
    assert res["context"]["randomness"] == {"randomized": "declared", "eot_samples": 20, "score_draws": 10}
    assert res["attacks"]["pgd_l2"]["grads"] == 3 * 20
    write_report(res, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "EOT over 20 draws" in text and "10 draws" in text
    plain = run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=8, quantize="no", progress=False)
    assert "randomness" not in plain["context"] and plain["attacks"]["pgd_l2"]["grads"] == 3
