"""Multi-process: an adversarial fit on 2 CPU processes (gloo, ddp_spawn) reports the same metrics
protocol as one process: same keys, and its final validation agrees with a one-process validation."""
from __future__ import annotations

import math
import socket

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.multiprocessing import ProcessRaisedException

from advtrain.data import NamedDataModule
from training_helpers import Kill, quick_fit

KEYS = {"val/acc", "val/pgd_acc", "val/attack_p_suc", "val/attack_l2_mean", "val/attack_l2_median",
        "val/attack_p_upp", "train/adv_l2", "train/adv_success", "train/acc", "train/loss"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def validate(module, **trainer_kw) -> dict[str, float]:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **trainer_kw)
    trainer.validate(module, NamedDataModule("mnist_embedded", batch_size=32, eval_batch_size=50), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


#: TRADES with AWP (issue 22): the KL-PGD inner attack and the weight perturbation under DDP (each rank perturbs
#: against its own shard; the restored weights and the all-reduced gradient keep the ranks identical)
TRADES_AWP = {"loss": "trades", "attack": "pgd_linf", "attack_options": {"eps": 0.3, "steps": 2}, "awp_gamma": 5e-3}


@pytest.mark.parametrize("module_kw", [None, TRADES_AWP], ids=["pgd_l2", "trades_awp"])
def test_two_process_adversarial_fit_reports_the_same_metrics_as_one(tmp_path, monkeypatch, module_kw):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    module, trainer = quick_fit(tmp_path, module_kw=module_kw, max_epochs=2, batches=4, val_batches=1.0,
                                accelerator="cpu", devices=2, strategy="ddp_spawn")
    assert trainer.world_size == 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 8  # 4 batches x 2 epochs
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert KEYS <= set(metrics), KEYS - set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())

    # the last validation of the 2-process fit saw the final weights: one process must agree on them
    one = validate(module, accelerator="cpu", devices=1)
    val_keys = {k for k in KEYS if k.startswith("val/")}
    assert val_keys <= set(one)
    # Same images (the first val_subset of the split) whatever the number of processes, but split into
    # other batches (16 per rank vs 32): float32 convolutions then differ in the last bits (reduction
    # order), which may move an attack's iterates. abs 0.02 is below one image of the 32 (1/32 = 0.031),
    # so the success rates and accuracies must agree exactly; rel 0.02 bounds the mean/median L2 drift.
    for k in val_keys:
        assert metrics[k] == pytest.approx(one[k], rel=0.02, abs=0.02), k


class RankSeeds(Callback):
    """Gives each process its own RNG stream (seed 100 + rank), so that restoring rank 0's state on
    every rank would change rank 1's random starts: the resume test below can then fail."""

    def on_train_start(self, trainer, pl_module) -> None:  # runs before the module's hook (resume)
        torch.manual_seed(100 + trainer.global_rank)


def test_two_process_run_killed_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    """Every rank's RNG state is in the checkpoint: a 2-process run killed mid-epoch and resumed ends
    with the weights of the uninterrupted run (random-start PGD draws differ per rank)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    kw = dict(max_epochs=2, batches=4, accelerator="cpu", devices=2, strategy="ddp_spawn")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    ref, _ = quick_fit(tmp_path / "full", callbacks=[RankSeeds()], **kw)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(ProcessRaisedException, match="RuntimeError: killed"):  # ddp_spawn re-raises a rank's error
        quick_fit(tmp_path / "run", callbacks=[RankSeeds(), Kill(7)], **kw)
    last = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6 and len(last["advtrain"]["rng"]) == 2  # mid-epoch 2 (4 steps an epoch)
    assert not torch.equal(last["advtrain"]["rng"][0]["torch"], last["advtrain"]["rng"][1]["torch"])
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    resumed, _ = quick_fit(tmp_path / "run", callbacks=[RankSeeds()], ckpt_path=str(tmp_path / "run" / "last.ckpt"),
                           **kw)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == 8
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
