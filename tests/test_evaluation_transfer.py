"""Transfer evaluation (evaluation/transfer.py, cli/transfer.py, evaluate.py --transfer) and the
MNIST zoo recipe (advtrain/zoo.py), on tiny members trained for one epoch on 512 digits."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from advtrain.evaluation import transfer as transfer_mod
from advtrain.evaluation.suite import parse_suite
from advtrain.evaluation.transfer import transfer_matrix
from advtrain.io.fingerprint import weights_tag
from advtrain.cli.transfer import zoo_members
from advtrain.models import build_model
from advtrain.zoo import Recipe, train_zoo

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = {"c4": Recipe("c4", epochs=1), "mlp": Recipe("mlp", epochs=1), "lenet": Recipe("lenet", epochs=1)}
SUITE = [{"attack": "mifgsm", "options": {"steps": 2}, "budgets": [0.2]},
         {"attack": "naa", "options": {"steps": 2, "ens": 2}, "budgets": [0.2]}]


def _evaluate_main(argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    train_zoo(out, TINY, limit=512, progress=False)
    return out


def test_zoo_trains_members_once_and_skips_unregistered_models(zoo, capsys):
    from advtrain.models.factory import BUILTIN
    manifest = json.loads((zoo / "zoo.json").read_text())
    expected = {"c4", "mlp"} | ({"lenet"} if "lenet" in BUILTIN else set())
    assert set(manifest) == expected
    assert all(m["test_accuracy"] > 0.5 for m in manifest.values())  # one epoch on 512 digits: far above 0.1
    stamps = {p: p.stat().st_mtime_ns for p in zoo.glob("*/last.ckpt")}
    train_zoo(zoo, TINY, limit=512, progress=False)
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("*/last.ckpt")} == stamps  # nothing retrained
    out = capsys.readouterr().out
    assert "c4: already trained, skipped" in out
    assert ("lenet" in BUILTIN) or "lenet: model 'lenet' is not registered" in out


def test_cli_writes_matrix_table_heatmap_and_resumes(zoo, tmp_path, monkeypatch):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "eval"
    argv = ["--transfer", "--zoo", str(zoo), "--suite", str(suite), "--n", "30", "--seeds", "0", "1",
            "--out", str(out), "--no-progress"]
    _evaluate_main(argv)
    res = json.loads((out / "transfer.json").read_text())
    members = sorted(res["context"]["sources"])
    assert set(res["summary"]) == {"mifgsm", "naa"} and len(res["cells"]) == 2 * len(members) * 2
    for label, rows in res["summary"].items():
        for src, row in rows.items():
            assert row["seeds"] == [0, 1]
            for tgt, cell in row["targets"].items():
                assert cell["white_box"] == (src == tgt) and 0 <= cell["mean"] <= 100 and len(cell["runs"]) == 2
            assert row["linf"]["mean"] <= 0.2 + 0.5 / 255 and 0 < row["ssim"]["mean"] <= 1
            assert row["grads"]["mean"] == (2 if label == "mifgsm" else 4)
    # white-box success of a 2-step eps = 0.2 attack exceeds its transfer to another architecture on average
    naa = res["summary"]["naa"]
    assert sum(naa[s]["targets"][s]["mean"] for s in naa) >= sum(naa[s]["avg_transfer"] for s in naa)
    table = (out / "transfer.md").read_text()
    assert "## naa" in table and "*" in table and "±" in table
    assert (out / "transfer.png").stat().st_size > 5_000
    # resumable: a rerun computes no cell
    monkeypatch.setattr(transfer_mod, "_cell", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    _evaluate_main(argv)
    assert json.loads((out / "transfer.json").read_text())["cells"] == res["cells"]


def test_same_file_as_source_and_target_is_the_white_box_cell(zoo, tmp_path):
    c4, mlp = str(zoo / "c4" / "last.ckpt"), str(zoo / "mlp" / "last.ckpt")
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(SUITE[:1]))
    _evaluate_main(["--transfer", "--sources", c4, "--targets", c4, mlp, "--suite", str(suite), "--n", "20",
                    "--out", str(tmp_path / "o"), "--no-progress"])
    row = json.loads((tmp_path / "o" / "transfer.json").read_text())["summary"]["mifgsm"]["c4"]
    assert row["targets"]["c4"]["white_box"] and not row["targets"]["mlp"]["white_box"]
    assert row["avg_transfer"] == row["targets"]["mlp"]["mean"]


def test_bad_input_one_line_errors(zoo, tmp_path, mnist_test_batch):
    x, y = mnist_test_batch[0][:8], mnist_test_batch[1][:8]
    c4 = build_model("c4")
    specs = parse_suite(SUITE[:1])
    with pytest.raises(ValueError, match="the zoo .* is empty") as e:
        zoo_members(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="at least one source and one target"):
        transfer_matrix(specs, {}, {"c4": c4}, x, y)
    with pytest.raises(ValueError, match="same number of classes, got c4: 10, c4_3: 3"):
        transfer_matrix(specs, {"c4": c4}, {"c4_3": build_model("c4", num_classes=3)}, x, y)
    bad = parse_suite([{"attack": "naa", "options": {"layer": "net.nope"}, "budgets": [0.1]}])
    with pytest.raises(ValueError, match=r"attack 'naa' on source 'c4': unknown layer 'net\.nope'.*valid layers") as e:
        transfer_matrix(bad, {"c4": c4}, {"c4": c4}, x, y)
    assert "\n" not in str(e.value)


def test_weights_tag_binds_cells_to_content():
    a, b = build_model("c4"), build_model("c4")
    b.load_state_dict(a.state_dict())
    assert weights_tag(a) == weights_tag(b)
    with torch.no_grad():
        b.net.classifier.bias.add_(1e-3)
    assert weights_tag(a) != weights_tag(b)


@pytest.mark.slow
def test_two_processes_give_one_process_counts(zoo, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(SUITE[:1]))
    outs = []
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        _evaluate_main(["--transfer", "--zoo", str(zoo), "--suite", str(suite), "--n", "60", "--batch-size", "16",
                        "--procs", str(procs), "--out", str(out), "--no-progress"])
        outs.append(json.loads((out / "transfer.json").read_text())["cells"])
    for cid, cell in outs[0].items():
        assert cell["success"] == outs[1][cid]["success"] and cell["n"] == outs[1][cid]["n"]


def test_models_leave_in_the_mode_they_came_in(zoo, mnist_test_batch):
    """The matrix runs every model in eval mode and restores each submodule's flag after (nn.state)."""
    from advtrain.evaluation.checkpoint import load_checkpoint

    c4, mlp = (load_checkpoint(str(zoo / k / "last.ckpt"))[0].train() for k in ("c4", "mlp"))
    mlp.net.eval()  # a mixed model: its own flags come back, not the top-level one everywhere
    flags = {k: [m.training for m in net.modules()] for k, net in (("c4", c4), ("mlp", mlp))}
    x, y = mnist_test_batch[0][:16], mnist_test_batch[1][:16]
    transfer_matrix(parse_suite(SUITE[:1]), {"c4": c4}, {"mlp": mlp}, x, y, progress=False)
    assert {k: [m.training for m in net.modules()] for k, net in (("c4", c4), ("mlp", mlp))} == flags
