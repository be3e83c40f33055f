"""evaluate.py --model NAME [--weights FILE] and --model pkg.module:callable (RobustBench-style)."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from test_evaluation_cli import script  # noqa: F401  (the evaluate.py module, a fixture)

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


@pytest.mark.parametrize("spec, weights", [("c4", "c4.pt"), ("c4", "c4_net.safetensors"), ("c4_zoo:load", None)])
def test_factory_name_with_weights_or_callable_load_the_trained_model(files, trained_c4, correct_test_batch,
                                                                      spec, weights):
    """The whole model's weights (.pt), the bare net's (.safetensors) and the callable: the same logits."""
    from advtrain.evaluation.external import load_model

    model = load_model(spec, None if weights is None else str(files / weights), num_classes=10, in_channels=1)
    assert not model.training
    x = correct_test_batch[0][:16]
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained_c4(x))


def test_evaluate_with_model_option_end_to_end(script, files, tmp_path):
    args = ["--model", "c4_zoo:load", "--data", "mnist_embedded", "--suite", str(files / "suite.yaml"),
            "--n", "24", "--quantize", "no", "--out", str(tmp_path), "--no-progress"]
    res = script.evaluate(script.parse_args(args), script.prepare(script.parse_args(args)))
    assert res["context"]["accuracy"] >= 0.9  # the trained C4, not a fresh one
    assert res["context"]["model"] == "c4_zoo:load" and "checkpoint" not in res["context"]
    assert json.loads((tmp_path / "results.json").read_text())["attacks"]["fgsm"]["status"] == "done"


@pytest.mark.parametrize("spec, weights, message", [
    ("c5", None, "unknown model 'c5'"),
    ("no_such_pkg.zoo:load", None, "cannot import 'no_such_pkg.zoo'"),
    ("c4_zoo:missing", None, "has no callable 'missing'"),
    ("c4_zoo:not_a_model", None, "returned int, not a torch.nn.Module"),
    ("c4", "other.pt", "do not fit model 'c4'"),
    ("c4_zoo:load", "other.pt", "do not fit model 'c4_zoo:load'"),
    ("c4", "missing.pt", "weights file not found"),
    ("c4", "suite.yaml", "is not a readable weights file"),  # a text file: damaged, not unsafe
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
