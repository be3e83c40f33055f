"""A ModelCheckpoint for resumable runs: saves every n training steps and the final state."""
from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` also holds the state at the end of training.

    With ``every_n_train_steps`` (so a run killed mid-epoch loses fewer than n batches), Lightning
    writes ``last.ckpt`` only at those steps, leaving it behind the final weights; this subclass
    writes it once more when training ends. Defaults: ``save_last=True``, ``save_top_k=0`` (only
    ``last.ckpt``), ``every_n_train_steps=20``.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 20, save_top_k: int = 0,
                 save_last: bool = True, **kwargs) -> None:
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=save_top_k,
                         save_last=save_last, **kwargs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
