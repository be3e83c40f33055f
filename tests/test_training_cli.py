"""train.py refuses bad training input with one line on stderr and no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_helpers import quick_fit

ROOT = Path(__file__).resolve().parents[1]


def train_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--trainer.max_epochs", "1",
                           "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
                           "--trainer.default_root_dir", str(cwd), "--trainer.logger", "false",
                           "--trainer.callbacks.init_args.dirpath", str(cwd)],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline"})


def assert_one_line_error(r: subprocess.CompletedProcess, msg: str) -> None:
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and msg in errors[0], r.stderr[-2000:]


@pytest.mark.parametrize("args,msg", [
    (["--model.attack", "pgd_l5"], "unknown attack 'pgd_l5'; known: alma_l2, apgd_l1, "),
    (["--model.attack", "fgsm", "--model.attack_options", "{eps: 0}"], "eps must be > 0 and finite, got 0"),
    (["--model.adv_weight", "1.5"], "adv_weight (mix ratio) must lie in [0, 1]"),
])
def test_bad_training_options(tmp_path, args, msg):
    assert_one_line_error(train_py(*args, cwd=tmp_path), msg)


def test_resuming_a_checkpoint_of_another_model(tmp_path):
    quick_fit(tmp_path / "c4", max_epochs=1, batches=2)
    r = train_py("--model.model", "cifar_cnn", "--ckpt_path", str(tmp_path / "c4" / "last.ckpt"), cwd=tmp_path)
    assert_one_line_error(r, "checkpoint is of another model")
