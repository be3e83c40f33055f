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
    (["--model.clean_epochs", "x"], "model.clean_epochs: Expected a <class 'int'>. Got value: x"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs: Expected a <class 'int'>. Got value: x"),
    (["--no_such_option", "1"], "unrecognized arguments: --no_such_option"),
])
def test_bad_input_is_a_short_clear_error(tmp_path, args, msg):
    r = run_train(*args, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    assert msg in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr


@pytest.mark.parametrize("old,new,msg", [
    ("max_patches: 50000", "niter: 5", "FitPatchCodebooks: option 'niter' was renamed to 'kmeans_steps'"),
    ("strength: 0.1}", "eps: 0.1}", "patch replacement layer: option 'eps' was renamed to 'strength'"),
])
def test_an_old_option_in_a_config_callback_names_the_new_one(tmp_path, old, new, msg):
    """jsonargparse lists every type a callback entry could have been; the line shown is the
    callback's own error, which names the renamed option's new name."""
    text = (ROOT / "configs" / "mnist_embedded_patch_replacement.yaml").read_text()
    assert old in text
    config = tmp_path / "old_names.yaml"
    config.write_text(text.replace(old, new))
    r = run_train("--config", str(config), "--trainer.max_epochs", "0", "--trainer.default_root_dir", str(tmp_path),
                  cwd=tmp_path)
    assert r.returncode == 2
    assert msg in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr
