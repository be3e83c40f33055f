"""Lightning's ``EMAWeightAveraging``, keeping the trained (non-averaged) weights in the final checkpoint.

Lightning's callback validates on the averaged weights, writes them as the checkpoint's ``state_dict``
(what evaluate.py and ``train.py test`` load) with the current ones in ``current_model_state``, and
copies the average into the model when training ends. The checkpoint written after that (the final
``last.ckpt`` of :class:`~advtrain.training.checkpoint.ResumableCheckpoint`) would then hold the
average twice; this subclass keeps the trained weights for it, so both are always in the checkpoint.
"""
from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging(decay=...)`` (same options); both weights in every checkpoint."""

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay!r}")
        super().__init__(decay=decay, **kwargs)
        self._trained_state: dict | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trained_state = copy.deepcopy(pl_module.state_dict())
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._trained_state is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._trained_state

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trained_state = None
