"""A battery of bad inputs, as a new user makes them: every one a clear one-line error (naming what
is wrong) or a correct run; nothing silently wrong, no finished result lost or overwritten.

Classes: corrupted and foreign files (checkpoints, weights, codebooks, images, results), options
(command line, YAML suites, Python API), models and data handed to ``run_suite``, stale results,
training (non-finite loss, another run's folder).
"""
from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advtrain.attacks import build_attack
from advtrain.cli import run_with_clean_errors
from advtrain.evaluation import run_suite
from advtrain.models import build_model
from training_helpers import lightning_ckpt

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = [{"attack": "fgsm", "budgets": [0.3]}]  # the cheapest suite: one FGSM run
N = 12
ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError)


def one_line(call, match: str) -> str:
    """``call()`` raises a user error whose message is one line containing ``match``."""
    with pytest.raises(ERRORS) as exc:
        call()
    msg = str(exc.value)
    assert "\n" not in msg.strip() and match in msg, msg
    return msg


# ------------------------------------------------------------------ fixtures: a checkpoint, its script
@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("evaluate_bad_inputs", ROOT / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def files(trained_c4, tmp_path_factory) -> dict[str, Path]:
    """Good and broken files, written once."""
    d = tmp_path_factory.mktemp("files")
    state = trained_c4.state_dict()
    good = lightning_ckpt(state, d / "good.ckpt")
    data = good.read_bytes()
    out = {"good": good}

    def write(name: str, payload: bytes) -> None:
        out[name] = d / name
        out[name].write_bytes(payload)

    write("empty.ckpt", b"")
    write("text.ckpt", b"model: c4\nweights: none\n")
    write("half.ckpt", data[: len(data) // 2])
    write("tail_cut.ckpt", data[:-64])
    write("random.ckpt", bytes(range(256)) * 64)
    damaged = bytearray(data)
    damaged[len(data) // 2: len(data) // 2 + 4096] = b"\xff" * 4096  # a few KiB of damaged bytes
    write("damaged.ckpt", bytes(damaged))
    torch.save(state, d / "plain.pt")
    out["plain.pt"] = d / "plain.pt"
    torch.save([1, 2, 3], d / "list.ckpt")
    out["list.ckpt"] = d / "list.ckpt"
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = {k: v.clone() for k, v in state.items()}
        bad["net.classifier.weight"][0, :3] = value
        out[f"{name}.ckpt"] = lightning_ckpt(bad, d / f"{name}.ckpt")
    out["classes.ckpt"] = lightning_ckpt(state, d / "classes.ckpt", num_classes=7)
    out["unknown_model.ckpt"] = lightning_ckpt(state, d / "unknown_model.ckpt", model="lenet9")
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 10}}, d / "no_model.ckpt")
    out["no_model.ckpt"] = d / "no_model.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model": "c4"}, "x": zipfile.ZipInfo("a")}, d / "pickle.ckpt")
    out["pickle.ckpt"] = d / "pickle.ckpt"
    out["folder.ckpt"] = d / "folder.ckpt"
    out["folder.ckpt"].mkdir()
    return out


def cli_error(script, capsys, *args: str) -> str:
    """evaluate.py exits 2 with exactly one line ``evaluate.py: error: ...`` on stderr."""
    with pytest.raises(SystemExit) as exc:
        run_with_clean_errors(lambda: script.main(list(args)), "evaluate.py")
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert err.startswith("evaluate.py: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ 1. checkpoints given to evaluate.py
CHECKPOINTS = [
    ("empty.ckpt", "is not a checkpoint"),
    ("text.ckpt", "is not a checkpoint"),
    ("half.ckpt", "is not a checkpoint"),
    ("tail_cut.ckpt", "is not a checkpoint"),
    ("random.ckpt", "is not a checkpoint"),
    ("damaged.ckpt", "non-finite"),
    ("plain.pt", "but a plain state_dict"),
    ("list.ckpt", "is not a train.py (Lightning) checkpoint"),
    ("nan.ckpt", "tensor 'model.net.classifier.weight' has 3 non-finite"),
    ("inf.ckpt", "tensor 'model.net.classifier.weight' has 3 non-finite"),
    ("classes.ckpt", "weights do not fit model 'c4'"),
    ("unknown_model.ckpt", "unknown model 'lenet9'"),
    ("no_model.ckpt", "hyper_parameters has no 'model' name"),
    ("pickle.ckpt", "cannot be loaded safely with weights_only=True"),
    ("folder.ckpt", "checkpoint not found"),
    ("missing.ckpt", "checkpoint not found"),
]


@pytest.mark.parametrize("name,msg", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_a_bad_checkpoint_is_one_line(script, files, capsys, tmp_path, name, msg):
    path = files.get(name, tmp_path / name)
    assert msg in cli_error(script, capsys, "--ckpt", str(path), "--out", str(tmp_path / "ev"))
    assert not (tmp_path / "ev" / "results.json").exists()


# ------------------------------------------------------------------ 2. evaluate.py options and suites
def suite_file(tmp_path: Path, entries) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(entries if isinstance(entries, str) else yaml.safe_dump(entries))
    return str(path)


CLI_OPTIONS = [
    (["--n", "0"], "--n must be >= 1, got 0"),
    (["--n", "-3"], "--n must be >= 1, got -3"),
    (["--n", "501"], "--n 501 is larger than the test set"),
    (["--d-upp", "0"], "d_upp must be > 0 and finite, got 0.0"),
    (["--d-upp", "-1"], "d_upp must be > 0"),
    (["--d-upp", "inf"], "d_upp must be > 0 and finite, got inf"),
    (["--d-upp", "nan"], "d_upp must be > 0 and finite, got nan"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--procs", "0"], "--procs must be >= 1"),
    (["--suite", "nosuch"], "suite 'nosuch' is neither a file nor a known suite"),
    (["--defense", "jpeg"], "unknown defense 'jpeg'"),
    (["--defense", "median:size"], "options are NAME:key=value"),
]


@pytest.mark.parametrize("args,msg", CLI_OPTIONS, ids=[" ".join(a) for a, _ in CLI_OPTIONS])
def test_a_bad_option_is_one_line(script, files, capsys, tmp_path, args, msg):
    err = cli_error(script, capsys, "--ckpt", str(files["good"]), "--out", str(tmp_path / "ev"),
                    "--suite", suite_file(tmp_path, TINY), *args)
    assert msg in err


SUITES = [
    ([{"attack": "ddn", "options": {"steps": 0}, "quantize_mode": "attack"}], "steps must be an integer >= 1, got 0"),
    ([{"attack": "pgd_l2", "options": {"steps": 2.5}, "budgets": [1.0]}], "steps must be an integer >= 1, got 2.5"),
    ([{"attack": "fgsm", "budgets": [float("inf")]}], "budgets (eps) must be > 0 and finite, got inf"),
    ([{"attack": "fgsm", "budgets": ["0.3"]}], "budgets (eps) must be a number, got str '0.3'"),
    ([{"attack": "fgsm", "budgets": []}], "budgets must be a non-empty list"),
    ([{"attack": "fgsm", "budgets": [0.0]}], "budgets (eps) must be > 0"),
    ([{"attack": "pgd_linf", "options": {"eps": "0.3"}}], "eps must be a number, got str '0.3'"),
    ([{"attack": "pgd_linf", "options": {"eps": float("inf")}}], "eps must be > 0 and finite, got inf"),
    ([{"attack": "ddn", "options": {"alpha": float("nan")}}], "alpha must be > 0 and finite, got nan"),
    ([{"attack": "ddn", "options": {"eval_mode": "no"}}], "eval_mode must be true or false, got str 'no'"),
    ([{"attack": "fgsm", "budgets": [0.1], "options": {"quantize": True}}], "option 'quantize' is set by the evaluation"),
    ([{"attack": "ddn", "quantize_mode": "always"}], "quantize_mode must be one of post, attack"),
    ([{"attack": "fgsm", "budgets": [0.1], "steps": 3}], "unknown key 'steps'"),
    ([{"attack": "fgsm", "budgets": [0.1]}, {"attack": "fgsm", "budgets": [0.2]}], "duplicate labels fgsm"),
    ([{"attack": "pgd_l9"}], "unknown attack 'pgd_l9'"),
    ("- {attack: fgsm\n", "is not valid YAML"),
    ("", "a suite is a non-empty YAML list"),
    ({"attack": "fgsm"}, "a suite is a non-empty YAML list"),
    (["fgsm"], "must be a mapping with an 'attack' key"),
]


@pytest.mark.parametrize("entries,msg", SUITES, ids=[m[:30] for _, m in SUITES])
def test_a_bad_suite_is_refused_before_any_attack(script, files, capsys, tmp_path, entries, msg):
    # a good first entry: the bad one must be found before it runs, not after
    if isinstance(entries, list) and all(isinstance(e, dict) for e in entries) and entries[0].get("budgets") != [0.1]:
        entries = [{"attack": "fgsm", "label": "first", "budgets": [0.3]}, *entries]
    err = cli_error(script, capsys, "--ckpt", str(files["good"]), "--out", str(tmp_path / "ev"),
                    "--suite", suite_file(tmp_path, entries), "--n", "8")
    assert msg in err
    assert not (tmp_path / "ev" / "results.json").exists()


def test_an_output_folder_that_is_a_file_is_refused_up_front(script, files, capsys, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    assert "output folder" in cli_error(script, capsys, "--ckpt", str(files["good"]), "--out", str(tmp_path / "taken"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_up_front(script, files, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert "is not writable" in cli_error(script, capsys, "--ckpt", str(files["good"]), "--out", str(ro / "ev"))


# ------------------------------------------------------------------ 3. codebooks (--defense patch_replacement)
@pytest.fixture(scope="module")
def codebooks(trained_c4, tmp_path_factory) -> dict[str, Path]:
    from advtrain.defenses import PatchReplacement
    from advtrain.defenses.codebooks import PQCodebook, load_safetensors, save_safetensors

    d = tmp_path_factory.mktemp("books")
    pr = PatchReplacement(trained_c4, layers=[{"layer": "image", "a": 1, "c": 1, "d": 1, "K": 4}])
    pr.set_codebook(0, PQCodebook(torch.linspace(0, 1, 4 * 9).view(1, 4, 9)))  # one slice of 3x3 patches
    good = pr.save(d / "good.safetensors")
    tensors, header = load_safetensors(good)
    out = {"good": good}
    nan = {k: v.clone().fill_(float("nan")) for k, v in tensors.items()}
    out["nan"] = save_safetensors(d / "nan.safetensors", nan, header)
    out["stale"] = save_safetensors(d / "stale.safetensors", tensors, {**header, "model_sha256": "0" * 64})
    out["truncated"] = d / "truncated.safetensors"
    out["truncated"].write_bytes(good.read_bytes()[:100])
    out["text"] = d / "text.safetensors"
    out["text"].write_text("codebooks: none")
    torch.manual_seed(1)
    other = PatchReplacement(build_model("c4"), layers=[{"layer": "image", "a": 1, "c": 1, "d": 1, "K": 4}])
    other.set_codebook(0, pr.defenses[0].codebook)
    out["other_weights"] = other.save(d / "other_weights.safetensors")
    return out


BOOKS = [("nan", "non-finite"), ("stale", "same architecture, other weights"), ("truncated", "not a readable codebook"),
         ("text", "not a readable codebook"), ("other_weights", "same architecture, other weights"),
         ("missing", "codebook file not found")]


@pytest.mark.parametrize("name,msg", BOOKS, ids=[b[0] for b in BOOKS])
def test_a_bad_codebook_file_is_one_line(script, files, codebooks, capsys, tmp_path, name, msg):
    path = codebooks.get(name, tmp_path / "missing.safetensors")
    err = cli_error(script, capsys, "--ckpt", str(files["good"]), "--out", str(tmp_path / "ev"),
                    "--defense", f"patch_replacement:codebooks={path}")
    assert msg in err


def test_the_codebooks_of_this_model_load(trained_c4, codebooks):
    from advtrain.defenses import PatchReplacement

    pr = PatchReplacement.load(trained_c4, codebooks["good"])
    assert pr(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# ------------------------------------------------------------------ 4. run_suite: options, models, data
def data(x: torch.Tensor | None = None, y=None, batch: int = 6) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 1, 28, 28, generator=g) if x is None else x
    y = torch.randint(0, 10, (N,), generator=g) if y is None else y
    return DataLoader(TensorDataset(x, y), batch_size=batch)


class Tuple(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x


class Softmax(Tuple):
    def forward(self, x):
        return self.net(x).softmax(dim=1)


def c4():
    torch.manual_seed(0)
    return build_model("c4").eval()


API = [
    (dict(n=0), "n (test images) must be an integer >= 1, got 0"),
    (dict(n=-1), "must be an integer >= 1, got -1"),
    (dict(n=2.5), "must be an integer >= 1, got 2.5"),
    (dict(n=True), "must be an integer >= 1, got True"),
    (dict(n=N + 1), f"n={N + 1} is larger than the test set ({N} images)"),
    (dict(d_upp=0), "d_upp must be > 0 and finite, got 0"),
    (dict(d_upp=-2.0), "d_upp must be > 0"),
    (dict(d_upp=float("inf")), "d_upp must be > 0 and finite, got inf"),
    (dict(d_upp="2"), "d_upp must be a number, got str '2'"),
    (dict(quantize=True), "quantize must be one of both, no, yes, got True"),
    (dict(quantize="maybe"), "quantize must be one of both, no, yes"),
    (dict(view="white"), "view must be one of bpda, direct, blackbox"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(seed="0"), "seed must be an integer"),
    (dict(points=0), "points must be an integer >= 1"),
    (dict(dataset="svhn"), "no default D_upp for dataset 'svhn'"),
    (dict(suite=[{"attack": "ddn", "options": {"steps": 0}}]), "steps must be an integer >= 1, got 0"),
    (dict(suite="nosuch"), "neither a file nor a known suite"),
]


@pytest.mark.parametrize("kw,msg", API, ids=[m[:40] for _, m in API])
def test_run_suite_refuses_a_bad_option(kw, msg):
    kw = {"suite": TINY, "progress": False, **kw}
    one_line(lambda: run_suite(c4(), data(), **kw), msg)


MODELS_AND_DATA = [
    (lambda: (lambda x: x), data, "model must be a torch.nn.Module, got function"),
    (lambda: Tuple(c4()), data, "the model must return a logits tensor [B, classes], got tuple"),
    (lambda: Softmax(c4()), data, "the model seems to return probabilities"),
    (lambda: c4().double(), data, "the images are torch.float32 but the model's weights are torch.float64"),
    (lambda: nn.Flatten(0), data, "the model must return logits of shape [12, classes], got (9408,)"),
    (c4, lambda: data(torch.rand(N, 1, 28, 28) * 255), "images must be pixels in [0, 1]"),
    (c4, lambda: data(torch.full((N, 1, 28, 28), float("nan"))), "images contain NaN or Inf"),
    (c4, lambda: data(torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8)), "must be a floating-point tensor"),
    (c4, lambda: data(torch.rand(N, 784)), "images must be a batch NCHW (4-D)"),
    (c4, lambda: data(y=torch.rand(N)), "labels must be a 1-D integer tensor"),
    (c4, lambda: data(y=torch.full((N,), 10)), "labels must lie in [0, 10)"),
    (c4, lambda: data(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), "the dataloader yielded no images"),
    (c4, lambda: [(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), "extra")], "(images, labels) pairs"),
    (c4, lambda: [(torch.rand(2, 1, 28, 28), ["a", "b"])], "labels must be"),
    (c4, lambda: [(torch.rand(3, 1, 28, 28), torch.zeros(2, dtype=torch.long))], "a batch has 3 images but 2 labels"),
]


@pytest.mark.parametrize("model,loader,msg", MODELS_AND_DATA, ids=[m[:40] for *_, m in MODELS_AND_DATA])
def test_run_suite_refuses_a_bad_model_or_data_up_front(model, loader, msg, tmp_path):
    one_line(lambda: run_suite(model(), loader(), TINY, progress=False, out_dir=tmp_path), msg)
    assert not (tmp_path / "results.json").exists()  # refused before the first attack


def test_labels_as_a_list_are_a_correct_run(trained_c4, mnist_test_batch):
    x, y = mnist_test_batch[0][:N], mnist_test_batch[1][:N]
    as_list = [(x[i:i + 4], y[i:i + 4].tolist()) for i in range(0, N, 4)]
    a = run_suite(trained_c4, as_list, TINY, progress=False, quantize="no")
    b = run_suite(trained_c4, data(x, y, batch=4), TINY, progress=False, quantize="no")
    assert a["attacks"] == {k: {**v, "time_s": a["attacks"][k]["time_s"]} for k, v in b["attacks"].items()}


def test_an_output_folder_that_is_a_file_is_refused_by_the_api(tmp_path):
    (tmp_path / "f").write_text("")
    one_line(lambda: run_suite(c4(), data(), TINY, progress=False, out_dir=tmp_path / "f"), "is a file, not a folder")


# ------------------------------------------------------------------ 5. stale results: bound to what was evaluated
def attacks_of(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())["attacks"]


def test_another_model_in_the_same_folder_is_refused_and_the_results_kept(trained_c4, mnist_dm, tmp_path):
    first = run_suite(trained_c4, mnist_dm.test_dataloader(), TINY, n=N, out_dir=tmp_path, progress=False)
    kept = (tmp_path / "results.json").read_bytes()
    other = build_model("c4").eval()
    other.load_state_dict(trained_c4.state_dict())
    with torch.no_grad():
        other.net.classifier.bias[0] += 1e-3  # same architecture, (slightly) other weights
    one_line(lambda: run_suite(other, mnist_dm.test_dataloader(), TINY, n=N, out_dir=tmp_path, progress=False),
             "holds results of another evaluation (different model weights)")
    assert (tmp_path / "results.json").read_bytes() == kept
    again = run_suite(trained_c4, mnist_dm.test_dataloader(), TINY, n=N, out_dir=tmp_path, progress=False)
    assert again["attacks"] == first["attacks"]  # same model and settings: the finished attack is reused


@pytest.mark.parametrize("change,what", [
    (dict(n=N - 1), "number of test images n"), (dict(d_upp=1.0), "d_upp"), (dict(quantize="no"), "quantize"),
    (dict(seed=1), "seed"), (dict(batch_size=5), "batch_size"),
    (dict(suite=[{"attack": "fgsm", "budgets": [0.2]}]), "finished results of fgsm with other attack options"),
])
def test_other_settings_in_the_same_folder_are_refused(trained_c4, mnist_dm, tmp_path, change, what):
    run_suite(trained_c4, mnist_dm.test_dataloader(), TINY, n=N, out_dir=tmp_path, progress=False)
    kept = (tmp_path / "results.json").read_bytes()
    kw = {"suite": TINY, "n": N, **change}
    one_line(lambda: run_suite(trained_c4, mnist_dm.test_dataloader(), out_dir=tmp_path, progress=False, **kw), what)
    assert (tmp_path / "results.json").read_bytes() == kept


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"context": 1, "attacks": {}}'])
def test_a_corrupt_results_file_is_refused_not_overwritten(trained_c4, mnist_dm, tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    one_line(lambda: run_suite(trained_c4, mnist_dm.test_dataloader(), TINY, n=N, out_dir=tmp_path, progress=False),
             "is not a readable results.json")
    assert (tmp_path / "results.json").read_text() == content


def test_a_replaced_checkpoint_file_is_not_reported_with_the_old_numbers(script, trained_c4, capsys, tmp_path):
    ckpt = lightning_ckpt(trained_c4.state_dict(), tmp_path / "last.ckpt")
    args = ["--ckpt", str(ckpt), "--suite", suite_file(tmp_path, TINY), "--n", str(N), "--no-progress",
            "--out", str(tmp_path / "ev")]
    script.main(args)
    kept = attacks_of(tmp_path / "ev")
    state = {k: v.clone() for k, v in trained_c4.state_dict().items()}
    state["net.classifier.bias"] += 1e-3
    lightning_ckpt(state, ckpt)  # another model at the same path
    assert "different model weights" in cli_error(script, capsys, *args)
    assert attacks_of(tmp_path / "ev") == kept


def test_a_crashed_attack_makes_evaluate_exit_1(script, files, capsys, tmp_path, monkeypatch):
    from advtrain.attacks.gradient import FGSM

    def boom(self, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(FGSM, "_run", boom)
    with pytest.raises(SystemExit) as exc:
        script.main(["--ckpt", str(files["good"]), "--suite", suite_file(tmp_path, TINY), "--n", "8",
                     "--no-progress", "--out", str(tmp_path / "ev")])
    assert exc.value.code == 1
    assert "1 attack(s) crashed (fgsm: RuntimeError: boom)" in capsys.readouterr().err


# ------------------------------------------------------------------ 6. attacks, weights files, smoothing, images
ATTACK_OPTIONS = [
    ("fgsm", dict(eps=float("inf")), "eps must be > 0 and finite, got inf"),
    ("fgsm", dict(eps="0.3"), "eps must be a number, got str '0.3'"),
    ("fgsm", dict(eps=0.3, quantize="no"), "quantize must be true or false, got str 'no'"),
    ("pgd_l2", dict(eps=1.0, steps=0), "steps must be an integer >= 1, got 0"),
    ("ddn", dict(init_norm=-1.0), "init_norm must be > 0"),
    ("cw_l2", dict(lr=float("nan")), "lr must be > 0 and finite, got nan"),
]


@pytest.mark.parametrize("name,kw,msg", ATTACK_OPTIONS, ids=[m[:30] for *_, m in ATTACK_OPTIONS])
def test_an_attack_refuses_a_bad_option(name, kw, msg):
    one_line(lambda: build_attack(name, **kw), msg)


@pytest.mark.parametrize("name,msg", [("half.ckpt", "is not a readable weights file"),
                                      ("text.ckpt", "is not a readable weights file"),
                                      ("list.ckpt", "holds no state_dict"),
                                      ("nan.ckpt", "non-finite"),
                                      ("plain.pt", "does not fit C4")])
def test_a_bad_weights_file_is_one_line(files, name, msg):
    # plain.pt is a NormalizedModel's state_dict (normalize.*, net.*), not the bare net's
    one_line(lambda: build_model("c4", weights=str(files[name])), msg)


def test_nan_in_a_smoothing_guide_image_is_one_line():
    from advtrain.smoothing import LaplacianSmoother, bilateral_filter

    guide = torch.rand(1, 1, 8, 8)
    guide[0, 0, 3, 3] = float("nan")
    one_line(lambda: LaplacianSmoother(guide), "the guide image x_o contains NaN")
    one_line(lambda: bilateral_filter(torch.rand(1, 1, 8, 8), guide=guide), "guide contains NaN")


def test_a_corrupt_image_in_an_image_folder_is_named(tmp_path):
    from PIL import Image

    from advtrain.data.datamodules import ImageFolderDataModule

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / split / cls / "ok.png")
    bad = tmp_path / "val" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, num_workers=0)
    dm.setup()
    assert dm.val_set[0][0].shape == (3, 8, 8)
    one_line(lambda: [dm.val_set[i] for i in range(len(dm.val_set))], f"unreadable image {bad}")


# ------------------------------------------------------------------ 7. training
def test_training_stops_on_a_non_finite_loss(tmp_path):
    from training_helpers import quick_fit

    from advtrain.training.module import NonFiniteLossError

    class Poison(__import__("lightning.pytorch").pytorch.Callback):
        def on_train_start(self, trainer, module):
            with torch.no_grad():
                module.model.net.classifier.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="training stopped: the loss is nan at epoch 0, step 0"):
        quick_fit(tmp_path, module_kw={"attack": None, "clean_epochs": 0}, callbacks=[Poison()], max_epochs=1,
                  batches=2, val_batches=0)
    assert not (tmp_path / "last.ckpt").exists()  # nothing saved


def test_a_second_run_into_a_finished_runs_folder_is_refused(tmp_path):
    from training_helpers import quick_fit

    kw = dict(module_kw={"attack": None, "clean_epochs": 0}, max_epochs=1, batches=2, val_batches=0)
    quick_fit(tmp_path, **kw)
    before = (tmp_path / "last.ckpt").read_bytes()
    one_line(lambda: quick_fit(tmp_path, **kw), "holds the checkpoint of another run")
    assert (tmp_path / "last.ckpt").read_bytes() == before


def test_a_user_suite_that_omits_quantize_mode_rounds_where_the_attack_does():
    """DDN, BP and C&W round every iterate (``rounds_iterates``): a suite entry without quantize_mode
    must run them with quantize=True per variant, not round their real-valued output afterwards."""
    from advtrain.evaluation import load_suite

    modes = {s.attack: s.quantize_mode for s in load_suite([{"attack": a} for a in ("ddn", "bp", "cw_l2", "deepfool")])}
    assert modes == {"ddn": "attack", "bp": "attack", "cw_l2": "attack", "deepfool": "post"}


def test_two_runs_of_train_py_into_one_root_keep_both_checkpoints(tmp_path):
    """The README's second command no longer replaces the first run's checkpoint: each run writes its
    own version_N (checkpoint and CSV logs, both under --trainer.default_root_dir); last.ckpt links to
    the newest; a resume is only ever from an explicit --ckpt_path."""
    import subprocess
    import sys

    args = [sys.executable, str(ROOT / "train.py"), "--trainer.default_root_dir", str(tmp_path / "r"),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0",
            "--model.clean_epochs", "1", "--skip_test", "true", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = (tmp_path / "r" / "version_0" / "last.ckpt").read_bytes()
    second = subprocess.run(args + ["--optimizer.lr", "0.01"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (tmp_path / "r" / "version_0" / "last.ckpt").read_bytes() == kept
    assert (tmp_path / "r" / "version_1" / "metrics.csv").is_file()
    assert os.readlink(tmp_path / "r" / "last.ckpt") == os.path.join("version_1", "last.ckpt")
    assert not (tmp_path / "runs").exists()  # nothing went to the config's own runs/demo


def test_train_py_refuses_to_resume_from_a_corrupted_checkpoint(files, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--ckpt_path", str(files["nan.ckpt"]),
                        "--trainer.default_root_dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    errors = [line for line in r.stderr.splitlines() if line.startswith("train.py: error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and "tensor 'model.net.classifier.weight' has 3 non-finite" in errors[0]
    assert not list(tmp_path.glob("version_*/last.ckpt"))
