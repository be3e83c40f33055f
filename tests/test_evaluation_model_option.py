"""evaluate.py --model NAME [--weights FILE] and --model pkg.module:callable (RobustBench-style)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_evaluation_cli import script  # noqa: F401  (the evaluate.py module, a fixture)

ROOT = Path(__file__).resolve().parents[1]
SUITE = [{"attack": "fgsm", "budgets": [0.1, 0.3]}]
#: the same C4 weights through a callable: a module on the path returning the model (as RobustBench's load_model)
CALLABLE_MODULE = '''
import torch
from advtrain.models import build_model

def load(path={path!r}):
    model = build_model("c4", num_classes=10)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model

def not_a_model():
    return 42
'''


@pytest.fixture(scope="module")
def files(trained_c4, tmp_path_factory):
    """Weights of the trained C4: the whole model's state dict (.pt), the bare net's (.safetensors),
    a suite, and an importable module ``c4_zoo`` with a callable."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("model_option")
    torch.save(trained_c4.state_dict(), d / "c4.pt")
    save_file({k: v.contiguous() for k, v in trained_c4.net.state_dict().items()}, str(d / "c4_net.safetensors"))
    torch.save({"weight": torch.zeros(3)}, d / "other.pt")
    (d / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    (d / "c4_zoo.py").write_text(CALLABLE_MODULE.format(path=str(d / "c4.pt")))
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    sys.modules.pop("c4_zoo", None)


def _run(script, files, out, *extra):
    args = ["--data", "mnist_embedded", "--suite", str(files / "suite.yaml"), "--n", "24", "--quantize", "no",
            "--out", str(out), "--no-progress", *extra]
    return script.evaluate(script.parse_args(args), script.prepare(script.parse_args(args)))


def test_factory_name_with_weights_and_callable_give_the_same_results(script, files, tmp_path):
    """c4 + the whole model's weights, c4 + the bare net's safetensors, and the callable: one model,
    so the same accuracy and the same FGSM numbers."""
    runs = [_run(script, files, tmp_path / "pt", "--model", "c4", "--weights", str(files / "c4.pt")),
            _run(script, files, tmp_path / "st", "--model", "c4", "--weights", str(files / "c4_net.safetensors")),
            _run(script, files, tmp_path / "fn", "--model", "c4_zoo:load")]
    ref = runs[0]
    assert ref["context"]["accuracy"] >= 0.9  # the trained C4, not a fresh one
    assert ref["context"]["model"] == "c4" and "checkpoint" not in ref["context"]
    for other in runs[1:]:
        assert other["context"]["accuracy"] == ref["context"]["accuracy"]
        assert other["attacks"]["fgsm"]["unquantized"]["per_sample"] == ref["attacks"]["fgsm"]["unquantized"]["per_sample"]
    assert json.loads((tmp_path / "fn" / "results.json").read_text())["context"]["model"] == "c4_zoo:load"


@pytest.mark.parametrize("spec, weights, message", [
    ("c5", None, "unknown model 'c5'"),
    ("no_such_pkg.zoo:load", None, "cannot import 'no_such_pkg.zoo'"),
    ("c4_zoo:missing", None, "has no callable 'missing'"),
    ("c4_zoo:not_a_model", None, "returned int, not a torch.nn.Module"),
    ("c4", "other.pt", "do not fit model 'c4'"),
    ("c4_zoo:load", "other.pt", "do not fit model 'c4_zoo:load'"),
    ("c4", "missing.pt", "weights file not found"),
    ("c4", "suite.yaml", "cannot be loaded safely"),
])
def test_bad_model_option_is_refused(files, spec, weights, message):
    """Each is a user error (ValueError/TypeError/FileNotFoundError: one line from evaluate.py)."""
    from advtrain.evaluation.external import load_model

    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        load_model(spec, None if weights is None else str(files / weights), num_classes=10, in_channels=1)


@pytest.mark.parametrize("argv, message", [
    (["--model", "c4"], "--model needs --data"),
    (["--model", "c4", "--ckpt", "x.ckpt", "--data", "mnist_embedded"], "exactly one of --ckpt"),
    ([], "exactly one of --ckpt"),
    (["--ckpt", "x.ckpt", "--weights", "w.pt"], "--weights goes with --model"),
])
def test_inconsistent_arguments_are_refused(script, argv, message):
    with pytest.raises(ValueError, match=message):
        script.parse_args(argv)


def test_command_line_prints_one_line_error(files, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--model", "c4", "--weights",
                           str(files / "other.pt"), "--data", "mnist_embedded", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error: --weights") and "do not fit" in lines[0]
