"""FitPatchCodebooks through train.py and the example YAML: codebooks beside the checkpoint, metrics logged."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from advtrain.defenses.patch_replacement import PatchReplacement
from advtrain.training import AdversarialTrainingModule
from advtrain.callbacks.fit_patch_codebooks import FitPatchCodebooks

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mnist_embedded_patch_replacement.yaml"


def small_copy_of_the_example_config(tmp_path: Path) -> Path:
    """The example YAML with fewer patches and codewords (the test budget), same structure."""
    cfg = yaml.safe_load(CONFIG.read_text())
    (fit,) = [cb for cb in cfg["trainer"]["callbacks"] if cb["class_path"].endswith("FitPatchCodebooks")]
    fit["init_args"]["max_patches"] = 3000
    for layer, k in zip(fit["init_args"]["layers"], (64, 32)):
        layer["K"] = k
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_training_yaml_fits_saves_and_logs_codebooks(tmp_path):
    out = tmp_path / "run"
    args = ["--config", str(small_copy_of_the_example_config(tmp_path)), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "15",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false", "--skip_test", "true",
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.callbacks.init_args.dirpath", str(out)]
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr[-3000:]
    path = out / "patch_codebooks.safetensors"
    assert path.is_file() and (out / "last.ckpt").is_file()
    rows = list(csv.DictReader(open(next(out.glob("version_*/metrics.csv")))))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("patch_codebooks/") and v}
    assert logged["patch_codebooks/fit_seconds"] > 0
    assert logged["patch_codebooks/val_acc_plain"] > 0.5   # 15 batches already learn digits
    assert logged["patch_codebooks/val_acc_defended"] >= logged["patch_codebooks/val_acc_plain"] - 0.1
    # the saved codebooks load onto the trained model and are refused for another architecture
    module = AdversarialTrainingModule.load_from_checkpoint(out / "last.ckpt", map_location="cpu", weights_only=True)
    pr = PatchReplacement.load(module.model, path)
    assert [c.layer for c in pr.layers] == ["image", "net.features.0"]
    assert pr.layers[1].strategy == "linf" and pr.layers[1].K == 32
    with torch.no_grad():
        assert pr(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    other = AdversarialTrainingModule(model="cifar_cnn").model
    with pytest.raises(ValueError, match="fitted for another model"):
        PatchReplacement.load(other, path)


def test_callback_bad_options():
    with pytest.raises(ValueError, match="at least one layer"):
        FitPatchCodebooks(layers=[])
    with pytest.raises(ValueError, match="E8 codebook needs slices of depth d = 8"):
        FitPatchCodebooks(layers=[{"layer": "image", "codebook": "e8", "d": 1}])
    with pytest.raises(ValueError, match="max_patches"):
        FitPatchCodebooks(layers=[{"layer": "image"}], max_patches=0)
