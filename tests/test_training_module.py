"""AdversarialTrainingModule pieces: options and errors, the inner loop, the loss mix, the metrics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advtrain.attacks import build_attack
from advtrain.ops.norms import l2_norm
from advtrain.evaluation.metrics import attack_stats
from advtrain.models import build_model
from advtrain.training import (AdversarialTrainingModule, RobustnessMetrics, adversarial_loss,
                               build_inner_attack, clip_perturbation)


@pytest.mark.parametrize("kw,msg", [
    ({"attack": "pgd_l3"}, "unknown attack 'pgd_l3'; known: .*bp.*ddn.*fgsm"),
    ({"attack": "fgsm", "attack_options": {"eps": 0.0}}, "eps must be > 0"),
    ({"attack": "pgd_l2", "attack_options": {"eps": -1.0}}, "eps must be > 0"),
    ({"attack": "fgsm", "attack_options": {"radius": 1.0}}, "no option 'radius'"),
    ({"adv_weight": 1.5}, r"mix ratio\) must lie in \[0, 1\]"),
    ({"adv_weight": -0.1}, r"mix ratio\) must lie in \[0, 1\]"),
    ({"clean_weight": -1.0}, "clean_weight must be >= 0"),
    ({"max_norm": 0.0}, "max_norm must be > 0"),
    ({"val_attack": "nope"}, "unknown attack 'nope'"),
])
def test_bad_options_are_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AdversarialTrainingModule(**kw)


def test_iterative_attacks_default_to_20_steps_unless_given():
    assert build_inner_attack("bp").steps == 20
    assert build_inner_attack("ddn").steps == 20
    assert build_inner_attack("pgd_l2", {"steps": 7}).steps == 7
    assert build_inner_attack("fgsm", {"eps": 0.3}).eps == 0.3  # no steps option: none added
    assert build_inner_attack("ddn", eval_mode=False).eval_mode is False


def test_craft_uses_eval_mode_and_frozen_parameters_and_restores_them():
    torch.manual_seed(0)
    m = AdversarialTrainingModule(model="cifar_cnn", attack="pgd_l2", attack_options={"steps": 2},
                                  val_attack=None, val_pgd=None)
    m.train()
    bn = m.model.net.features[1]
    before = bn.running_mean.clone()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    x_adv, _ = m.craft(x, y)
    assert torch.equal(bn.running_mean, before)  # eval mode: BN statistics untouched
    assert m.training and all(mod.training for mod in m.model.modules())
    assert all(p.requires_grad and p.grad is None for p in m.parameters())
    assert not x_adv.requires_grad and float(l2_norm(x_adv - x).max()) <= 2.0 + 1e-5
    m_bn = AdversarialTrainingModule(model="cifar_cnn", attack="pgd_l2", attack_options={"steps": 2},
                                     attack_train_mode=True, val_attack=None, val_pgd=None).train()
    bn = m_bn.model.net.features[1]
    before = bn.running_mean.clone()
    m_bn.craft(x, y)
    assert not torch.equal(bn.running_mean, before)  # train-mode BN when asked


def test_max_norm_clips_the_perturbation_and_keeps_its_direction():
    x = torch.rand(6, 1, 28, 28) * 0.5 + 0.25
    delta = torch.randn_like(x) * torch.tensor([0.001, 0.01, 0.02, 0.05, 0.1, 0.2]).view(-1, 1, 1, 1)
    x_adv = x + delta
    out = clip_perturbation(x_adv, x, 1.0)
    norms = l2_norm(out - x)
    assert bool((norms <= 1.0 + 1e-5).all())
    small = l2_norm(delta) <= 1.0
    assert torch.allclose(out[small], x_adv[small].clamp(0, 1))
    assert torch.allclose(F.cosine_similarity((out - x).flatten(1)[~small], delta.flatten(1)[~small]),
                          torch.ones(int((~small).sum())), atol=0.05)  # up to box clipping
    assert clip_perturbation(x_adv, x, None) is x_adv


def test_loss_mix_goodfellow_madry_and_clean_weight():
    torch.manual_seed(0)
    model = build_model("c4")
    x, x_adv, y = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    ce_c, ce_a = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    good, logits = adversarial_loss(model, x, x_adv, y, 0.5)
    assert torch.allclose(good, 0.5 * ce_c + 0.5 * ce_a, atol=1e-5)
    assert torch.allclose(logits, model(x), atol=1e-5)
    madry, _ = adversarial_loss(model, x, x_adv, y, 1.0)
    assert torch.allclose(madry, ce_a, atol=1e-5)
    weighted, _ = adversarial_loss(model, x, x_adv, y, 1.0, clean_weight=0.3)
    assert torch.allclose(weighted, 0.3 * ce_c + ce_a, atol=1e-5)


def test_robustness_metrics_under_inference_mode_match_the_evaluation_code(trained_c4, mnist_test_batch):
    """Lightning validates under inference_mode: the attacks must still get their gradients."""
    x, y = mnist_test_batch
    pgd = build_attack("pgd_l2", eps=2.0, steps=10)
    ddn = build_attack("ddn", steps=30)
    metrics = RobustnessMetrics(10, pgd, ddn, subset=100, d_upp=2.0)
    with torch.inference_mode():
        for i in range(0, 256, 64):  # batches straddle the subset boundary (100)
            metrics.update(trained_c4, x[i:i + 64], y[i:i + 64])
    out = metrics.compute()
    with torch.no_grad():
        correct = trained_c4(x[:100]).argmax(1) == y[:100]
    assert out["acc"] == pytest.approx(float((trained_c4(x).argmax(1) == y).float().mean()))
    assert out["acc"] > 0.9 and out["pgd_acc"] < out["acc"] - 0.2
    success, l2 = metrics.last_curve
    assert len(success) == int(correct.sum())  # X = subset images classified correctly
    ref = ddn(trained_c4, x[:100][correct], y[:100][correct])
    stats = attack_stats(ref.success, ref.l2, 2.0)
    assert out["attack_p_suc"] == pytest.approx(stats.p_suc)
    assert out["attack_l2_mean"] == pytest.approx(stats.d_bar, rel=1e-4)
    assert out["attack_l2_median"] == pytest.approx(stats.d_median, rel=1e-4)
    assert 0.5 < out["attack_l2_mean"] < 3.0
    metrics.reset()
    assert metrics._seen == 0 and metrics.clean_acc.update_count == 0


def test_robustness_metrics_when_no_subset_image_is_classified_correctly():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    torch.nn.init.zeros_(model[1].weight)
    with torch.no_grad():
        model[1].bias.copy_(torch.arange(10.0))  # always predicts 9
    metrics = RobustnessMetrics(10, None, build_attack("ddn", steps=2), subset=8, d_upp=2.0)
    metrics.update(model, torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    out = metrics.compute()
    assert out["acc"] == 0.0 and out["attack_p_suc"] == 0.0 and out["attack_l2_mean"] != out["attack_l2_mean"]


def test_load_from_checkpoint_with_weights_only_refuses_pickled_objects(tmp_path):
    """How train.py and the tests load checkpoints: plain tensors and containers only; an object that
    unpickling would construct (here a zipfile.ZipInfo standing for an exploit's payload) is refused."""
    import pickle
    import zipfile

    import lightning.pytorch as pl

    module = AdversarialTrainingModule(val_attack=None, val_pgd=None)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__}
    torch.save(ckpt, tmp_path / "ok.ckpt")
    loaded = AdversarialTrainingModule.load_from_checkpoint(tmp_path / "ok.ckpt", weights_only=True)
    assert torch.equal(loaded.model.net.classifier.weight, module.model.net.classifier.weight)
    torch.save({**ckpt, "payload": zipfile.ZipInfo("a")}, tmp_path / "pickle.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        AdversarialTrainingModule.load_from_checkpoint(tmp_path / "pickle.ckpt", weights_only=True)
