"""train.py end to end on the embedded MNIST, and one-line errors on bad input."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "WANDB_MODE": "offline"})


def reported_test_accuracy(stdout: str) -> float:
    assert "test/acc" in stdout
    return float(stdout.split("test/acc")[1].split()[0])


def test_short_fit_writes_checkpoint_and_test_subcommand_reloads_it(tmp_path):
    """``fit`` then ``test --ckpt_path``: the reloaded checkpoint (weights_only) scores exactly what the
    fitted model scored (same weights, same test split)."""
    out = tmp_path / "run"
    r = run_train("fit", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20",
                  "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
                  "--trainer.callbacks.init_args.dirpath", str(out), "--trainer.enable_progress_bar", "false",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "last.ckpt").is_file()
    acc = reported_test_accuracy(r.stdout)
    assert acc > 0.7  # 20 batches of C4 already learn digits
    r = run_train("test", "--ckpt_path", str(out / "last.ckpt"), "--trainer.logger", "false",
                  "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert reported_test_accuracy(r.stdout) == acc


@pytest.mark.parametrize("args,msg", [
    (["--model.model", "lenet9"], "unknown model 'lenet9'"),
    (["--data.dataset", "svhn"], "unknown dataset 'svhn'"),
    (["--data.dataset", "cifar10", "--data.root", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--model.no_such_key", "1"], "no_such_key"),
    (["--ckpt_path", "/nonexistent.ckpt"], "checkpoint to resume from not found"),
    (["validate", "--ckpt_path", "/nonexistent.ckpt"], "checkpoint to evaluate not found"),
])
def test_bad_input_is_a_short_clear_error(tmp_path, args, msg):
    r = run_train(*args, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode != 0
    assert msg in r.stderr
    assert "Traceback" not in r.stderr
