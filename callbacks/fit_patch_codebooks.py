"""Fit patch-replacement codebooks after training (thesis 6.3.2: "Patch replacement does not need to
train the network but we need to train the codebook"), save them beside the checkpoints, and log the
fit time and the defended clean accuracy.

In a training YAML (see ``configs/mnist_embedded_patch_replacement.yaml``)::

    trainer:
      callbacks:
        - class_path: advtrain.callbacks.fit_patch_codebooks.FitPatchCodebooks
          init_args:
            layers: [{layer: image, a: 1, c: 1, K: 128}]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from advtrain.defenses.patch_replacement import LayerConfig, PatchReplacement
from advtrain.nn.state import eval_mode


class FitPatchCodebooks(pl.Callback):
    """On ``on_fit_end``: patches from the training data -> codebooks -> ``<dir>/<filename>``.

    Args:
        layers: the defended layers (options of :class:`LayerConfig`: layer, a, c, d, codebook,
            K, scale, strategy, strength).
        max_patches: training patches per slice fed to k-means.
        kmeans_steps, seed: k-means iterations and seed.
        filename: written in the checkpoint callback's ``dirpath``, else ``trainer.default_root_dir``.
        eval_batches: validation batches for the defended clean accuracy (None: all).

    Runs on global rank 0 with that rank's training loader. After fitting, ``path`` and ``metrics``
    hold the saved file and the logged numbers.
    """

    def __init__(self, layers: list[dict[str, Any]], max_patches: int = 50_000, kmeans_steps: int = 20,
                 seed: int = 0, filename: str = "patch_codebooks.safetensors",
                 eval_batches: int | None = None) -> None:
        if not layers:
            raise ValueError("FitPatchCodebooks needs at least one layer, e.g. [{layer: image, K: 128}]")
        self.layers = [LayerConfig.of(dict(spec) if not isinstance(spec, LayerConfig) else spec)
                       for spec in layers]
        if max_patches < 1:
            raise ValueError(f"max_patches must be >= 1, got {max_patches}")
        if eval_batches is not None and eval_batches < 1:
            raise ValueError(f"eval_batches must be >= 1 or None, got {eval_batches}")
        self.max_patches, self.kmeans_steps, self.seed = max_patches, kmeans_steps, seed
        self.filename, self.eval_batches = filename, eval_batches
        self.path: Path | None = None
        self.metrics: dict[str, float] = {}

    def output_dir(self, trainer: pl.Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        dirpath = getattr(ckpt, "dirpath", None) if ckpt is not None else None
        return Path(dirpath or trainer.default_root_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, "model", pl_module)
        dm = trainer.datamodule
        train = dm.train_dataloader() if dm is not None else trainer.train_dataloader
        defended = PatchReplacement(model, self.layers).fit(train, max_patches=self.max_patches,
                                                            kmeans_steps=self.kmeans_steps, seed=self.seed)
        self.path = defended.save(self.output_dir(trainer) / self.filename)
        self.metrics = {"patch_codebooks/fit_seconds": float(defended.last_fit_seconds)}
        val = dm.val_dataloader() if dm is not None else None
        if val is not None:
            self.metrics["patch_codebooks/val_acc_plain"] = self._accuracy(model, val)
            self.metrics["patch_codebooks/val_acc_defended"] = self._accuracy(defended, val)
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)
            logger.save()
        rank_zero_info(f"patch codebooks saved to {self.path}: " +
                       ", ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in self.metrics.items()))

    def _accuracy(self, model: torch.nn.Module, loader) -> float:
        device = next(model.parameters()).device
        correct = total = 0
        with eval_mode(model), torch.no_grad():
            for i, (x, y) in enumerate(loader):
                if self.eval_batches is not None and i >= self.eval_batches:
                    break
                correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
                total += len(y)
        return correct / max(total, 1)
