"""Exact resume: a run killed mid-epoch and resumed from its last checkpoint ends identically."""
from __future__ import annotations

import pytest
import torch

from training_helpers import Kill, quick_fit



@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    module, trainer = quick_fit(tmp_path_factory.mktemp("full"))
    return module, dict(trainer.callback_metrics)


#: the epoch metrics of training, in the checkpoint since issue 24 (a resumed epoch reports the whole epoch)
TRAIN_METRICS = ("train/acc", "train/adv_l2", "train/adv_success")


@pytest.mark.parametrize("kill_at", [13, 22])  # mid-epoch 1 (adversarial, after the clean epoch), mid last epoch
def test_killed_and_resumed_run_ends_with_the_same_weights_and_metrics(tmp_path, uninterrupted, kill_at, recwarn):
    ref, ref_metrics = uninterrupted
    with pytest.raises(RuntimeError, match="killed"):
        quick_fit(tmp_path, callbacks=[Kill(kill_at)])
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)  # what evaluate.py loads: plain tensors only
    assert last["global_step"] == kill_at - kill_at % 3 and last["global_step"] % 8 != 0  # mid-epoch
    recwarn.clear()
    module, trainer = quick_fit(tmp_path, ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 24
    assert not [w for w in recwarn if "not resumable" in str(w.message)], "Lightning sees a non-resumable loader"
    for (name, a), b in zip(ref.state_dict().items(), module.state_dict().values()):
        assert torch.equal(a, b), name
    metrics = dict(trainer.callback_metrics)
    for k in ("val/acc", "val/pgd_acc", "val/attack_l2_mean", "val/attack_l2_median", *TRAIN_METRICS):
        assert float(metrics[k]) == float(ref_metrics[k]), k


#: the new objectives (issue 22), each with the random state it draws on: TRADES' Gaussian start + AWP,
#: MART on PGD with a uniform start, N-FGSM's noise + GradAlign's noise, TRADES with the EMA callback
NEW = {
    "trades_awp": dict(loss="trades", attack="pgd_linf", attack_options={"eps": 0.3, "steps": 2}, awp_gamma=5e-3),
    "mart": dict(loss="mart", attack="pgd_linf", attack_options={"eps": 0.3, "steps": 2}),
    "nfgsm_gradalign": dict(loss="gradalign", attack="nfgsm", attack_options={"eps": 0.3}),
    "trades_ema": dict(loss="trades", attack="pgd_linf", attack_options={"eps": 0.3, "steps": 2}),
}


@pytest.mark.parametrize("name", ["trades_awp", *[pytest.param(n, marks=pytest.mark.slow)
                                                  for n in ("mart", "nfgsm_gradalign", "trades_ema")]])
def test_new_objectives_resume_exactly(tmp_path, name):
    """Killed mid-epoch 1 (step 13; last checkpoint at 12) and resumed: weights and epoch metrics as uninterrupted."""
    from advtrain.callbacks.weight_averaging import EMA
    kw = {"module_kw": {**NEW[name], "clean_epochs": 0}, "max_epochs": 2}
    extra = (lambda: [EMA(decay=0.9)]) if name == "trades_ema" else (lambda: [])
    ref, ref_trainer = quick_fit(tmp_path / "full", callbacks=extra(), **kw)
    with pytest.raises(RuntimeError, match="killed"):
        quick_fit(tmp_path / "run", callbacks=[*extra(), Kill(13)], **kw)
    module, trainer = quick_fit(tmp_path / "run", callbacks=extra(), ckpt_path=str(tmp_path / "run" / "last.ckpt"), **kw)
    for (k, a), b in zip(ref.state_dict().items(), module.state_dict().values()):
        assert torch.equal(a, b), k
    for k in TRAIN_METRICS:
        assert float(trainer.callback_metrics[k]) == float(ref_trainer.callback_metrics[k]), k


def test_resume_without_the_sampler_would_differ(tmp_path, uninterrupted):
    """The test above can fail: a different data order (another seed) changes the final weights."""
    ref, _ = uninterrupted
    module, _ = quick_fit(tmp_path, module_kw={"seed": 1})
    assert not torch.equal(ref.model.net.classifier.weight, module.model.net.classifier.weight)


def test_resuming_from_a_checkpoint_of_another_model_is_a_clear_error(tmp_path, uninterrupted):
    quick_fit(tmp_path, max_epochs=1, batches=3)
    with pytest.raises(ValueError, match="checkpoint is of another model"):
        quick_fit(tmp_path / "other", module_kw={"model": "cifar_cnn"}, ckpt_path=str(tmp_path / "last.ckpt"))
