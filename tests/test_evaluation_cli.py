"""evaluate.py: checkpoint loading, outputs, sharding over processes, one-line errors."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from advtrain.cli import run_with_clean_errors
from training_helpers import lightning_ckpt

ROOT = Path(__file__).resolve().parents[1]
SUITE = [{"attack": "fgsm", "budgets": [0.1, 0.2, 0.3]},
         {"attack": "pgd_linf", "options": {"steps": 5, "early_stop": True}, "budgets": [0.3]},
         {"attack": "ddn", "options": {"steps": 5}, "quantize_mode": "attack"}]


def _load_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def ckpt(trained_c4, tmp_path_factory):
    """The trained C4 as train.py writes it (Lightning layout: model.* weights, hyper_parameters)."""
    return lightning_ckpt(trained_c4.state_dict(), tmp_path_factory.mktemp("ckpt") / "last.ckpt", attack=None)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


def _numbers(results: dict) -> dict:
    """Everything but timings (which differ from run to run)."""
    return {label: {k: v for k, v in e.items() if k != "time_s"} for label, e in results["attacks"].items()}


#: float32 distortions computed with another thread count (one process uses both cores, each of two
#: processes one) may differ in the last bits: convolution reductions are summed in another order.
#: Relative 1e-5 is ~80 float32 ulps (2^-23 = 1.2e-7): far below any distortion that matters, far above
#: the 1e-8 seen (0.99773451 vs 0.99773452). Counts, indices and success masks are compared exactly.
FLOAT32_RTOL = 1e-5


def assert_same(a, b, where: str = "results") -> None:
    """``a == b`` with floats to ``FLOAT32_RTOL`` and everything else (ints, bools, strings, None) exact."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool) and isinstance(b, (int, float)):
        assert a == pytest.approx(b, rel=FLOAT32_RTOL, abs=1e-12, nan_ok=True), f"{where}: {a} != {b}"
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def test_one_process_and_two_give_the_same_results(script, ckpt, suite_file, tmp_path):
    common = ["--ckpt", str(ckpt), "--suite", str(suite_file), "--n", "40", "--batch-size", "16", "--no-progress"]
    script.main(common + ["--out", str(tmp_path / "one")])
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    for name in ("report.md", "curves.png", "examples.png"):
        assert (tmp_path / "one" / name).stat().st_size > 0
    report = (tmp_path / "one" / "report.md").read_text()
    assert "with 8-bit quantization" in report and "without quantization" in report and "| ddn |" in report
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *common, "--out", str(tmp_path / "two"),
                        "--procs", "2"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["context"]["indices"] == two["context"]["indices"] and one["context"]["n"] >= 36
    assert_same(_numbers(one), _numbers(two), "attacks")
    assert_same(one["worst_case"], two["worst_case"], "worst_case")


def _error(script, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        run_with_clean_errors(lambda: script.main(list(args)), "evaluate.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate.py: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_a_clear_one_line_error(script, ckpt, suite_file, tmp_path, capsys):
    assert "checkpoint not found: /nonexistent.ckpt" in _error(script, capsys, "--ckpt", "/nonexistent.ckpt")
    assert "is not a checkpoint" in _error(script, capsys, "--ckpt", str(suite_file))
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    assert "is not a train.py (Lightning) checkpoint" in _error(script, capsys, "--ckpt", str(plain))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{"attack": "pgd_l9"}]))
    assert "unknown attack 'pgd_l9'; known:" in _error(script, capsys, "--ckpt", str(ckpt), "--suite", str(bad))
    bad.write_text(yaml.safe_dump([{"attack": "pgd_l2", "options": {"step": 5}, "budgets": [1.0]}]))
    assert "has no option 'step'; valid options:" in _error(script, capsys, "--ckpt", str(ckpt), "--suite", str(bad))
    assert "unknown defense 'jpeg'" in _error(script, capsys, "--ckpt", str(ckpt), "--defense", "jpeg")
    assert "no option 'bit'" in _error(script, capsys, "--ckpt", str(ckpt), "--defense", "bit_depth:bit=3")
    assert "--n 501 is larger than the test set of mnist_embedded (500 images)" in _error(
        script, capsys, "--ckpt", str(ckpt), "--n", "501")


def test_a_defended_checkpoint_reports_what_bpda_approximated(script, ckpt, suite_file, tmp_path):
    script.main(["--ckpt", str(ckpt), "--suite", str(suite_file), "--n", "16", "--out", str(tmp_path), "--no-progress",
                 "--defense", "bit_depth:bits=5", "--defense", "median:size=2", "--quantize", "yes"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["context"]["bpda_approximated"] == ["bit_depth", "median"] and res["context"]["view"] == "bpda"
    assert list(res["worst_case"]) == ["quantized"]
    assert "attacked through BPDA (identity backward): bit_depth, median" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_wandb_logger_writes_an_offline_run(script, ckpt, suite_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    script.main(["--ckpt", str(ckpt), "--suite", str(suite_file), "--n", "16", "--out", str(tmp_path),
                 "--no-progress", "--logger", "wandb"])
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_patch_replacement_codebooks_from_the_command_line(script, ckpt, suite_file, trained_c4, mnist_dm, tmp_path):
    """``--defense patch_replacement:codebooks=FILE`` wraps the model; BPDA applies (thesis 6.6)."""
    from advtrain.defenses import PatchReplacement

    pr = PatchReplacement(trained_c4, layers=[{"layer": "image", "a": 1, "c": 1, "d": 1, "K": 32}])
    pr.fit(mnist_dm.train_dataloader(), max_patches=5000, kmeans_steps=5)
    book = pr.save(tmp_path / "books.safetensors")
    script.main(["--ckpt", str(ckpt), "--suite", str(suite_file), "--n", "16", "--out", str(tmp_path / "ev"),
                 "--no-progress", "--quantize", "no", "--defense", f"patch_replacement:codebooks={book}"])
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["context"]["bpda_approximated"] == ["patch_replacement[image]"]
