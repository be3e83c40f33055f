"""Multi-process: an adversarial fit on 2 CPU processes (gloo, ddp_spawn) reports the same metrics
protocol as one process: same keys, and its final validation agrees with a one-process validation."""
from __future__ import annotations

import math
import socket

import lightning.pytorch as pl
import pytest
import torch

from advtrain.data import NamedDataModule
from training_helpers import quick_fit

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


def test_two_process_adversarial_fit_reports_the_same_metrics_as_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    module, trainer = quick_fit(tmp_path, max_epochs=2, batches=4, val_batches=1.0, accelerator="cpu",
                                devices=2, strategy="ddp_spawn")
    assert trainer.world_size == 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 8  # 4 batches x 2 epochs
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert KEYS <= set(metrics), KEYS - set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())

    # the last validation of the 2-process fit saw the final weights: one process must agree on them
    one = validate(module, accelerator="cpu", devices=1)
    val_keys = {k for k in KEYS if k.startswith("val/")}
    assert val_keys <= set(one)
    for k in val_keys:  # same images (the first val_subset of the split) whatever the number of processes
        assert metrics[k] == pytest.approx(one[k], rel=0.02, abs=0.02), k
