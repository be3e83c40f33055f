"""A ModelCheckpoint for resumable runs: saves every n training steps and the final state, in a
folder of its own per run, never over another run's checkpoint, never non-finite weights."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from ..io.fingerprint import check_finite_state


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` also holds the state at the end of training.

    With ``every_n_train_steps`` (so a run killed mid-epoch loses fewer than n batches), Lightning
    writes ``last.ckpt`` only at those steps, leaving it behind the final weights; this subclass
    writes it once more when training ends. Defaults: ``save_last=True``, ``save_top_k=0`` (only
    ``last.ckpt``), ``every_n_train_steps=20``.

    Without ``dirpath`` the checkpoints go to the logger's versioned ``log_dir`` (``<save_dir>/<name>/
    version_N``, beside ``metrics.csv``): each run its own folder. A ``dirpath`` that already holds a
    ``last.ckpt`` is refused unless this run resumes from a checkpoint in it (``--ckpt_path``).
    Weights that became NaN/Inf stop training instead of being saved.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 20, save_top_k: int = 0,
                 save_last: bool = True, **kwargs) -> None:
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=save_top_k,
                         save_last=save_last, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None and trainer.loggers and trainer.loggers[0].log_dir:
            self.dirpath = trainer.loggers[0].log_dir
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = Path(self.dirpath or ".") / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        resume = trainer.ckpt_path
        resuming_here = resume is not None and Path(resume).resolve().parent == last.parent.resolve()
        if last.is_file() and not resuming_here:
            raise ValueError(f"{last} holds the checkpoint of another run: give this run its own folder "
                             f"(another --trainer.default_root_dir, or no checkpoint dirpath for a versioned "
                             f"one) or resume it with --ckpt_path {last}")
        super().on_train_start(trainer, pl_module)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        check_finite_state(trainer.lightning_module.state_dict(),
                           f"training stopped at step {trainer.global_step}, nothing saved")
        super()._save_checkpoint(trainer, filepath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
