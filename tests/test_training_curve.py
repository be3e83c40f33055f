"""The robustness-curve callback: P(D) of the validation attack every epoch, to CSV and to wandb."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from advtrain.callbacks.robustness_curve import RobustnessCurve
from training_helpers import quick_fit


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_curve_goes_to_csv_and_wandb_every_epoch(tmp_path):
    curve = RobustnessCurve(d_max=4.0, points=41, csv_points=5)
    loggers = [CSVLogger(tmp_path, name="csv"), WandbLogger(save_dir=str(tmp_path), project="advtrain-test", offline=True)]
    module, trainer = quick_fit(tmp_path, max_epochs=2, batches=2, val_batches=1.0, callbacks=[curve],
                                logger=loggers)
    loggers[1].experiment.finish()

    assert [e for e, _, _ in curve.history] == [0, 1]
    _, grid, p = curve.history[-1]
    assert torch.all(p[1:] >= p[:-1]) and float(p[0]) == 0.0  # P(D) increases from P(0) = 0 (eq. 3.2)
    assert float(p[-1]) == pytest.approx(float(trainer.callback_metrics["val/attack_p_suc"]))
    d_upp = int(torch.searchsorted(grid, torch.tensor(2.0, dtype=grid.dtype)))
    assert float(p[d_upp]) == pytest.approx(float(trainer.callback_metrics["val/attack_p_upp"]))

    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    cols = [c for c in rows[0] if c.startswith("val_curve/P(D=")]
    assert len(cols) == 5 and "val_curve/P(D=4)" in cols
    curve_rows = [r for r in rows if r[cols[0]] != ""]
    assert len(curve_rows) == 2  # one row per epoch
    assert [float(curve_rows[-1][c]) for c in cols] == pytest.approx([float(v) for v in p[::10]])

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = sorted((runs[0] / "files" / "media" / "table" / "val_curve").glob("table_*.table.json"))
    assert len(tables) == 2, tables  # one table per epoch
    data = json.loads(tables[-1].read_text())
    assert data["columns"] == ["epoch", "D", "P(D)"] and len(data["data"]) == 41
    assert [row[2] for row in data["data"]] == pytest.approx([float(v) for v in p])
    assert b"val_curve/plot_table" in next(runs[0].glob("*.wandb")).read_bytes()  # the line plot
