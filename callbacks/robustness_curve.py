"""Log the operating characteristic P(D) of the validation attack every epoch (thesis eq. 3.2).

Reads the (success, L2) pairs that :class:`advtrain.training.RobustnessMetrics` kept from the
last validation epoch (already synced across processes) and computes P(D) on a fixed grid with
:func:`advtrain.evaluation.metrics.operating_characteristic`. Wandb gets a line plot and a table;
other loggers (CSV) get the curve as numbers ``val_curve/P(D=...)``.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor

from advtrain.evaluation.metrics import operating_characteristic


class RobustnessCurve(pl.Callback):
    """P(D) of the validation attack at ``points`` distortions evenly spaced on [0, ``d_max``].

    Args:
        d_max: right end of the grid (default: 2 x the module's ``d_upp``, fixed across epochs so
            curves of successive epochs are comparable).
        points: grid size for wandb; the CSV logger gets ``csv_points`` of them (fewer columns).
    """

    def __init__(self, d_max: float | None = None, points: int = 101, csv_points: int = 11) -> None:
        if d_max is not None and not d_max > 0:
            raise ValueError(f"d_max must be > 0, got {d_max}")
        if points < 2 or csv_points < 2:
            raise ValueError(f"points and csv_points must be >= 2, got {points}, {csv_points}")
        self.d_max, self.points, self.csv_points = d_max, points, csv_points
        self.history: list[tuple[int, Tensor, Tensor]] = []  # (epoch, grid, P(D)) on rank 0

    def curve(self, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor] | None:
        last = getattr(getattr(pl_module, "val_metrics", None), "last_curve", None)
        if last is None:
            return None
        success, l2 = last
        d_max = self.d_max or 2.0 * float(pl_module.hparams.get("d_upp", 2.0))
        grid = torch.linspace(0.0, d_max, self.points, dtype=torch.float64)
        return grid, operating_characteristic(success, l2, grid)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        out = self.curve(pl_module)
        if out is None:
            return
        grid, p = out
        epoch = trainer.current_epoch
        self.history.append((epoch, grid, p))
        for logger in trainer.loggers:
            if _is_wandb(logger):
                _log_wandb(logger, grid, p, epoch, trainer.global_step)
            else:
                step = max(1, (self.points - 1) // (self.csv_points - 1))
                logger.log_metrics({f"val_curve/P(D={float(d):.3g})": float(v)
                                    for d, v in zip(grid[::step], p[::step])} | {"epoch": epoch},
                                   step=trainer.global_step)


def _is_wandb(logger: object) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def _log_wandb(logger, grid: Tensor, p: Tensor, epoch: int, step: int) -> None:
    import wandb

    rows = [[epoch, float(d), float(v)] for d, v in zip(grid, p)]
    table = wandb.Table(data=rows, columns=["epoch", "D", "P(D)"])
    plot = wandb.plot.line(table, "D", "P(D)", title=f"P(D) of the validation attack, epoch {epoch}")
    logger.experiment.log({"val_curve/table": table, "val_curve/plot": plot, "trainer/global_step": step})
