"""The battery of bad inputs and faults, evaluation side (issue 24): fitted files on first use, one run per
output folder, Ctrl-C mid-suite, artifacts that are non-finite, implausible or edited after writing,
untrained artifacts, problems found before any attack runs (not after others ran), the machine's failures
(full disk, read-only folders), and messages that name what is wrong. Each case is a clear one-line error
or a correct run; no finished result is lost or overwritten.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from advtrain.cli import run_with_clean_errors
from advtrain.evaluation import run_suite
from advtrain.evaluation.suite import load_suite, parse_suite
from advtrain.featspace.stats import ActivationStats, fit_activation_stats
from advtrain.io.files import folder_lock, temporary_for
from advtrain.models import build_model
from featspace_files import untrained_style_pair
from test_bad_inputs import TINY, cli_error, data, files, one_line, script, suite_file  # noqa: F401 (fixtures)
from training_helpers import lightning_ckpt

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
PLANES = ["net.features.0", "net.features.2"]
SLOW_FGSM_SUITE = [{"attack": "fgsm", "budgets": [0.3]},
                   {"attack": "pgd_linf", "options": {"steps": 100000, "early_stop": False}, "budgets": [0.3]}]


def evaluate_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "evaluate.py"), *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ADVTRAIN_TRACEBACK": ""}


def no_temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.tmp"))


# ------------------------------------------------------------------ 1. FSA's files fitted on first use
@pytest.mark.parametrize("suite", ["unrestricted_mnist", [{"attack": "fsa"}], [{"attack": "fsa", "options": {"steps": 3}}]],
                         ids=["readme_suite", "bare_fsa", "fsa_with_options"])
def test_an_fsa_entry_without_files_validates(suite):
    specs = load_suite(suite, "mnist_embedded")
    assert any(s.attack == "fsa" and s.options.get("encoder") is None for s in specs)


@pytest.fixture
def fitted_by_mock(monkeypatch):
    """The FSA fitting calls of ``featspace/provision.py`` replaced by copies of a small untrained pair
    (the code path around them runs as is); returns the list of files they were asked to write."""
    import advtrain.featspace.fitting as fitting
    import advtrain.featspace.decoder as decoder

    pair, calls = untrained_style_pair(), []

    def encoder(out, dataset="mnist_embedded", *a, **k):
        calls.append(Path(out))
        return Path(shutil.copyfile(pair["encoder"], out))

    def fit_decoder(enc, out, x, y, **k):
        assert Path(enc).is_file() and len(x) == len(y) > 0
        calls.append(Path(out))
        return Path(shutil.copyfile(pair["decoder"], out))

    monkeypatch.setattr(fitting, "train_encoder", encoder)
    monkeypatch.setattr(decoder, "fit_style_decoder", fit_decoder)
    return calls


def test_fsa_files_are_fitted_on_first_use_and_reused(trained_c4, mnist_dm, tmp_path, fitted_by_mock):
    suite = [{"attack": "fsa", "options": {"steps": 2}}]
    res = run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=8, out_dir=tmp_path / "a", progress=False)
    assert res["attacks"]["fsa"]["status"] == "done", res["attacks"]["fsa"].get("error")
    assert [p.name for p in fitted_by_mock] == ["fsa_encoder.safetensors", "fsa_decoder.safetensors"]
    assert all(p.parent == tmp_path / "a" for p in fitted_by_mock)
    run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=8, out_dir=tmp_path / "a", progress=False)
    assert len(fitted_by_mock) == 2  # cached: not fitted again


def test_the_readme_suite_fits_fsa_beside_the_checkpoint(script, trained_c4, tmp_path, fitted_by_mock, capsys):
    ckpt = lightning_ckpt(trained_c4.state_dict(), tmp_path / "last.ckpt")
    entries = [{"attack": "fsa", "options": {"steps": 2}}]
    script.main(["--ckpt", str(ckpt), "--suite", suite_file(tmp_path, entries), "--n", "8", "--no-progress",
                 "--out", str(tmp_path / "ev")])
    assert (tmp_path / "fsa_decoder.safetensors").is_file()
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["attacks"]["fsa"]["status"] == "done"


def test_fsa_without_files_and_nowhere_to_fit_them_is_refused_up_front(trained_c4, mnist_dm):
    one_line(lambda: run_suite(trained_c4, mnist_dm.test_dataloader(), [{"attack": "fgsm", "budgets": [0.3]},
                                                                         {"attack": "fsa"}], n=8, progress=False),
             "fsa: no files given and no out_dir to fit them into")


@pytest.mark.slow
def test_the_readme_unrestricted_example_runs_end_to_end_on_a_fresh_folder(trained_c4, tmp_path):
    """python evaluate.py --ckpt runs/demo/last.ckpt --suite unrestricted_mnist --n 500, files fitted."""
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    lightning_ckpt(trained_c4.state_dict(), demo / "last.ckpt")
    proc = subprocess.run(evaluate_cmd("--ckpt", "runs/demo/last.ckpt", "--suite", "unrestricted_mnist", "--n", "500",
                                       "--no-progress"), cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    attacks = json.loads((demo / "eval" / "results.json").read_text())["attacks"]
    assert {k: e["status"] for k, e in attacks.items()} == {"ifgsm": "done", "d2b": "done", "fsa": "done"}
    assert (demo / "fsa_encoder.safetensors").is_file() and (demo / "fsa_decoder.safetensors").is_file()


# ------------------------------------------------------------------ 2. one run per output folder
HOLD = "import sys, time; from advtrain.io.files import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
       "    print('held', flush=True); time.sleep(120)\n"


@pytest.fixture
def held(tmp_path):
    """A process holding ``tmp_path / 'ev'`` (yields (folder, pid)); killed -9 after."""
    folder = tmp_path / "ev"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_an_evaluation_into_a_folder_another_run_holds_is_refused_naming_its_pid(script, files, capsys, held):
    folder, proc = held
    err = cli_error(script, capsys, "--ckpt", str(files["good"]), "--out", str(folder))
    assert f"is in use by another evaluation (pid {proc.pid})" in err
    assert not (folder / "results.json").exists()


def test_run_suite_into_a_folder_another_run_holds_is_refused(trained_c4, mnist_dm, held):
    folder, proc = held
    one_line(lambda: run_suite(trained_c4, mnist_dm.test_dataloader(), TINY, n=8, out_dir=folder, progress=False),
             f"(pid {proc.pid})")


def test_a_killed_holder_releases_the_folder(held):
    folder, proc = held
    proc.kill()  # kill -9: the kernel drops its flock
    proc.wait()
    with folder_lock(folder):
        with folder_lock(folder):  # reentrant in one process (evaluate.py holds it around run_suite)
            pass


def test_temporaries_are_per_process_and_hidden(tmp_path):
    tmp = temporary_for(tmp_path / "results.json")
    assert tmp.parent == tmp_path and tmp.name.startswith(".") and str(os.getpid()) in tmp.name


def test_two_evaluations_started_into_one_folder_at_once(files, tmp_path):
    """Fault: --n 40 and --n 30 into one --out at the same time. One runs; the other is refused in one line
    (the lock while the first runs, or the first's results after it finished); its results stay whole."""
    suite = suite_file(tmp_path, [{"attack": "fgsm", "budgets": [0.1, 0.2, 0.3]}])
    out = tmp_path / "ev"
    procs = {n: subprocess.Popen(evaluate_cmd("--ckpt", str(files["good"]), "--suite", suite, "--n", n, "--out",
                                              str(out), "--no-progress"), env=env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for n in ("40", "30")}
    done = {n: (p.wait(300), p.stderr.read()) for n, p in procs.items()}
    codes = sorted(rc for rc, _ in done.values())
    assert codes == [0, 2], {n: (rc, err[-800:]) for n, (rc, err) in done.items()}
    winner = next(n for n, (rc, _) in done.items() if rc == 0)
    loser_err = next(err for rc, err in done.values() if rc == 2).strip().splitlines()
    assert len(loser_err) == 1 and ("in use by another evaluation" in loser_err[0]
                                    or "holds results of another evaluation" in loser_err[0]), loser_err
    results = json.loads((out / "results.json").read_text())
    assert results["context"]["n_prime"] == int(winner) and results["attacks"]["fgsm"]["status"] == "done"
    assert not no_temporaries(out)


# ------------------------------------------------------------------ 3. Ctrl-C mid-suite
def test_sigint_after_the_first_attack_writes_its_report_and_exits_non_zero(files, tmp_path):
    out = tmp_path / "ev"
    # SIGINT restored to its default in the child: a suite started in the background of a non-interactive
    # shell (nohup ... &) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(evaluate_cmd("--ckpt", str(files["good"]), "--suite", suite_file(tmp_path, SLOW_FGSM_SUITE),
                                         "--n", "8", "--out", str(out), "--no-progress"),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (out / "results.json").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "results.json").is_file(), proc.stderr.read() if proc.poll() is not None else "no results.json"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never left running (its suite attacks for hours) when an assertion fails
    assert proc.returncode == 130, err[-1500:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted: 1 finished attack(s) (fgsm)" in lines[0], err[-1500:]
    assert "| fgsm |" in (out / "report.md").read_text()
    attacks = json.loads((out / "results.json").read_text())["attacks"]
    assert list(attacks) == ["fgsm"] and attacks["fgsm"]["status"] == "done"
    assert not no_temporaries(out)


# ------------------------------------------------------------------ 4. artifacts: finite, plausible, as written
@pytest.fixture(scope="module")
def stats_files(trained_c4, mnist_dm, tmp_path_factory) -> dict[str, Path]:
    """D2B statistics of the trained C4, then broken copies of them."""
    d = tmp_path_factory.mktemp("stats")
    x = torch.stack([mnist_dm.train_set[i][0] for i in range(64)])
    stats = fit_activation_stats(trained_c4, [x], PLANES, progress=False)
    good = stats.save(d / "good.safetensors")
    out = {"good": good}

    def variant(name: str, **change) -> None:
        std = {k: change.get("std", lambda t: t)(v.clone()) for k, v in stats.std.items()}
        out[name] = ActivationStats(stats.mean, std, stats.count, stats.model_hash).save(d / f"{name}.safetensors")

    variant("nan_std", std=lambda t: t.fill_(float("nan")))
    variant("negative_std", std=lambda t: -t - 1)
    tensors = load_file(str(good))
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    edited = {k: v * 2 if k.endswith("/std") else v for k, v in tensors.items()}
    save_file(edited, str(d / "edited.safetensors"), metadata=meta)  # the stored checksum is the original's
    out["edited"] = d / "edited.safetensors"
    save_file(tensors, str(d / "no_checksum.safetensors"), metadata={k: v for k, v in meta.items()
                                                                   if k != "content_sha256"})
    out["no_checksum"] = d / "no_checksum.safetensors"
    (d / "truncated.safetensors").write_bytes(good.read_bytes()[:200])
    out["truncated"] = d / "truncated.safetensors"
    (d / "random.safetensors").write_bytes(bytes(range(256)) * 16)
    out["random"] = d / "random.safetensors"
    torch.manual_seed(3)
    out["other_model"] = fit_activation_stats(build_model("c4").eval(), [x], PLANES, progress=False).save(
        d / "other.safetensors")
    out["one_plane"] = fit_activation_stats(trained_c4, [x], PLANES[:1], progress=False).save(d / "one.safetensors")
    return out


STATS = [("nan_std", "non-finite"), ("negative_std", "negative std"), ("edited", "does not match the content checksum"),
         ("no_checksum", "has no content checksum"), ("truncated", "is not a safetensors file"),
         ("random", "is not a safetensors file"), ("other_model", "were fitted on another model"),
         ("one_plane", "the statistics have no plane net.features.2"), ("missing", "file not found")]


@pytest.mark.parametrize("name,msg", STATS, ids=[s[0] for s in STATS])
def test_bad_d2b_statistics_are_refused_before_any_attack(trained_c4, mnist_dm, stats_files, tmp_path, name, msg):
    stats = stats_files.get(name, tmp_path / "missing.safetensors")
    suite = [{"attack": "fgsm", "budgets": [0.3]},
             {"attack": "d2b", "options": {"stats": str(stats), "layers": PLANES, "steps": 2}}]
    one_line(lambda: run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=8, out_dir=tmp_path / "ev",
                               progress=False), msg)
    assert not (tmp_path / "ev" / "results.json").exists()  # fgsm did not run first


def test_good_d2b_statistics_run(trained_c4, mnist_dm, stats_files, tmp_path):
    suite = [{"attack": "d2b", "options": {"stats": str(stats_files["good"]), "steps": 2}}]
    res = run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=8, out_dir=tmp_path, progress=False)
    assert res["attacks"]["d2b"]["status"] == "done"


@pytest.fixture(scope="module")
def style_files(tmp_path_factory) -> dict[str, str]:
    """The untrained style pair and broken copies of its files."""
    from advtrain.featspace.decoder import Decoder
    from advtrain.featspace.encoder import Encoder

    d = tmp_path_factory.mktemp("style")
    pair = untrained_style_pair()
    enc = Encoder.load(pair["encoder"])
    dec = Decoder.load(pair["decoder"], enc)
    out = dict(pair)
    nan = Decoder(dec.in_channels, dec.hidden, dec.out_channels)
    nan.load_state_dict({k: torch.full_like(v, float("nan")) for k, v in dec.state_dict().items()})
    out["nan_decoder"] = str(nan.save(d / "nan_dec.safetensors", enc, steps=1))
    flat = Encoder(enc.net, enc.channel_mean, torch.zeros_like(enc.channel_std))
    out["zero_std_encoder"] = str(flat.save(d / "flat_enc.safetensors"))
    tensors = load_file(pair["decoder"])
    with safe_open(pair["decoder"], "pt") as f:
        meta = f.metadata()
    save_file({k: v + 0.01 for k, v in tensors.items()}, str(d / "edited_dec.safetensors"), metadata=meta)
    out["edited_decoder"] = str(d / "edited_dec.safetensors")
    return out


FSA_FILES = [("nan_decoder", "decoder", "non-finite"), ("edited_decoder", "decoder", "does not match the content checksum"),
             ("zero_std_encoder", "encoder", "channel std must be > 0")]


@pytest.mark.parametrize("name,role,msg", FSA_FILES, ids=[f[0] for f in FSA_FILES])
def test_bad_fsa_files_are_refused_in_the_suite(style_files, name, role, msg):
    options = {"encoder": style_files["encoder"], "decoder": style_files["decoder"], role: style_files[name]}
    one_line(lambda: parse_suite([{"attack": "fgsm", "budgets": [0.3]}, {"attack": "fsa", "options": options}]), msg)


@pytest.fixture(scope="module")
def pixel_books(trained_c4, tmp_path_factory) -> dict[str, Path]:
    from advtrain.defenses import PatchReplacement
    from advtrain.defenses.codebooks import PQCodebook, load_safetensors, save_safetensors

    d = tmp_path_factory.mktemp("books")
    pr = PatchReplacement(trained_c4, layers=[{"layer": "image", "a": 1, "c": 1, "d": 1, "K": 4}])
    pr.set_codebook(0, PQCodebook(torch.linspace(0, 1, 4 * 9).view(1, 4, 9)))
    good = pr.save(d / "good.safetensors")
    tensors, header = load_safetensors(good)
    out = {"x37": save_safetensors(d / "x37.safetensors", {k: v * 37 for k, v in tensors.items()}, header)}
    raw = load_file(str(good))
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    save_file({k: v * 0.5 for k, v in raw.items()}, str(d / "edited.safetensors"), metadata=meta)
    out["edited"] = d / "edited.safetensors"
    save_file(raw, str(d / "old.safetensors"), metadata={"advtrain": meta["advtrain"]})
    out["no_checksum"] = d / "old.safetensors"
    return out


BOOKS = [("x37", "image-layer codewords must be pixels in [0, 1]"),
         ("edited", "does not match the content checksum"), ("no_checksum", "has no content checksum")]


@pytest.mark.parametrize("name,msg", BOOKS, ids=[b[0] for b in BOOKS])
def test_implausible_or_edited_codebooks_are_refused(script, files, pixel_books, capsys, tmp_path, name, msg):
    err = cli_error(script, capsys, "--ckpt", str(files["good"]), "--out", str(tmp_path / "ev"),
                    "--defense", f"patch_replacement:codebooks={pixel_books[name]}")
    assert msg in err


@pytest.mark.parametrize("fill", [float("nan"), 2.0], ids=["nan_images", "pixels_outside_0_1"])
def test_an_attack_returning_no_images_is_a_crash_never_a_success(trained_c4, mnist_dm, tmp_path, monkeypatch, fill):
    from advtrain.attacks.base import AttackResult
    from advtrain.attacks.gradient import FGSM

    def broken(self, model, x, y, **kw):
        bad = torch.full_like(x, fill)
        return AttackResult(bad, torch.ones(len(y), dtype=torch.bool), (bad - x).flatten(1).norm(dim=1),
                            (bad - x).flatten(1).abs().amax(1), grads=1)

    monkeypatch.setattr(FGSM, "__call__", broken)
    res = run_suite(trained_c4, mnist_dm.test_dataloader(), TINY, n=8, out_dir=tmp_path, progress=False)
    entry = res["attacks"]["fgsm"]
    assert entry["status"] == "error" and "NaN, Inf or pixels outside [0, 1]" in entry["error"]


class NaNAway(nn.Module):
    """Finite logits on the clean images it was shown first, NaN on any other input."""

    def __init__(self, net: nn.Module, x: torch.Tensor) -> None:
        super().__init__()
        self.net, self.clean = net, x

    def forward(self, x):
        out = self.net(x)
        same = (x.flatten(1)[:, None] == self.clean.flatten(1)[None]).all(2).any(1)
        return torch.where(same[:, None], out, torch.full_like(out, float("nan")))


def test_nan_logits_on_adversarial_images_are_never_a_success(trained_c4, correct_test_batch, tmp_path):
    x, y = correct_test_batch[0][:8], correct_test_batch[1][:8]
    model = NaNAway(trained_c4, x)
    res = run_suite(model, data(x, y), TINY, n=8, out_dir=tmp_path, progress=False)
    entry = res["attacks"]["fgsm"]
    assert entry["status"] == "error" and "NaN or Inf logits" in entry["error"]


# ------------------------------------------------------------------ 5. untrained artifacts are not written
def featspace_error(capsys, *args: str) -> str:
    from advtrain.cli.featspace import main

    with pytest.raises(SystemExit) as exc:
        run_with_clean_errors(lambda: main(list(args)), "featspace")
    err = capsys.readouterr().err.strip()
    assert exc.value.code in (1, 2) and err.startswith("featspace: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("epochs", ["0", "-2"])
def test_an_untrained_encoder_is_refused(capsys, tmp_path, epochs):
    assert "epochs" in featspace_error(capsys, "encoder", "--out", str(tmp_path / "e.safetensors"), "--epochs", epochs)
    assert not list(tmp_path.iterdir())


DECODER_CONFIGS = [({"steps": 0}, "dec.yaml: steps must be an integer >= 1, got 0"),
                   ({"steps": "5"}, "steps must be an integer >= 1, got '5'"),
                   ({"steps": -3}, "steps must be an integer >= 1"),
                   ({"batch_size": 0}, "batch_size must be an integer >= 1"),
                   ({"lr": -1.0}, "lr must be > 0"), ({"lr": "fast"}, "lr must be a number"),
                   ({"encoder_epochs": 0}, "encoder_epochs must be an integer >= 1"),
                   ({"seed": "0"}, "seed must be an integer"), ({"stpes": 5}, "unknown key stpes")]


@pytest.mark.parametrize("change,msg", DECODER_CONFIGS, ids=[str(c[0]) for c in DECODER_CONFIGS])
def test_a_bad_decoder_config_is_one_line_before_any_training(capsys, tmp_path, change, msg):
    cfg = tmp_path / "dec.yaml"
    cfg.write_text(yaml.safe_dump({"encoder": str(tmp_path / "e.safetensors"), "out": str(tmp_path / "d.safetensors"),
                                   **change}))
    assert msg in featspace_error(capsys, "decoder", "--config", str(cfg))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dec.yaml"]


@pytest.mark.parametrize("text,msg", [("- steps: 5\n", "a decoder config is a YAML mapping"),
                                      ("steps: [1\n", "is not valid YAML")], ids=["a_list", "bad_yaml"])
def test_a_decoder_config_that_is_no_mapping_is_one_line(capsys, tmp_path, text, msg):
    (tmp_path / "dec.yaml").write_text(text)
    assert msg in featspace_error(capsys, "decoder", "--config", str(tmp_path / "dec.yaml"))


def test_fit_style_decoder_refuses_zero_steps(tmp_path):
    from advtrain.featspace.decoder import fit_style_decoder

    one_line(lambda: fit_style_decoder(untrained_style_pair()["encoder"], tmp_path / "d.safetensors",
                                       torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long), steps=0),
             "untrained decoder is no decoder")
    assert not (tmp_path / "d.safetensors").exists()


# ------------------------------------------------------------------ 6. found before any attack runs
LAYERS = [("naa", "nosuch"), ("fia", "nosuch"), ("nrdm", "net.features.99"), ("fda", "nosuch"), ("ilpd", "nosuch")]


@pytest.mark.parametrize("attack,layer", LAYERS, ids=[a for a, _ in LAYERS])
def test_an_unknown_layer_is_refused_before_any_attack(trained_c4, mnist_dm, tmp_path, attack, layer):
    suite = [{"attack": "fgsm", "budgets": [0.3]}, {"attack": attack, "options": {"layer": layer}, "budgets": [0.1]}]
    one_line(lambda: run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=8, out_dir=tmp_path, progress=False),
             f"{attack}: unknown layer {layer!r}")
    assert not (tmp_path / "results.json").exists()


def test_an_unknown_d2b_plane_is_refused_before_any_attack(trained_c4, mnist_dm, tmp_path):
    suite = [{"attack": "fgsm", "budgets": [0.3]}, {"attack": "d2b", "options": {"layers": ["nosuch"]}}]
    one_line(lambda: run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=8, out_dir=tmp_path, progress=False),
             "d2b: unknown layer 'nosuch'")
    assert not (tmp_path / "results.json").exists()


class Narrow(nn.Module):
    """Two of C4's classes: a 2-class model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[:, :2]


@pytest.mark.parametrize("attack", ["apgd_t_l2", "apgd_t_linf"])
def test_apgd_t_on_a_two_class_model_is_refused_before_any_attack(trained_c4, tmp_path, attack):
    y = torch.zeros(8, dtype=torch.long)
    suite = [{"attack": "fgsm", "budgets": [0.3]}, {"attack": attack, "budgets": [0.3]}]
    one_line(lambda: run_suite(Narrow(trained_c4), data(torch.rand(8, 1, 28, 28), y), suite, n=8, out_dir=tmp_path,
                               progress=False), "needs at least 4 classes, the model has 2")


def test_rgb_images_into_a_one_channel_model_are_one_line(trained_c4, tmp_path):
    one_line(lambda: run_suite(trained_c4, data(torch.rand(8, 3, 28, 28), torch.zeros(8, dtype=torch.long)), TINY,
                               n=8, out_dir=tmp_path, progress=False), "the model fails on images of shape (3, 28, 28)")


def test_an_rgb_model_on_one_channel_images_is_refused(tmp_path):
    torch.manual_seed(0)
    rgb = build_model("cifar_cnn").eval()
    one_line(lambda: run_suite(rgb, data(torch.rand(8, 1, 32, 32), torch.zeros(8, dtype=torch.long)), TINY,
                               n=8, out_dir=tmp_path, progress=False),
             "the model normalizes 3-channel images (normalize) but the images have 1 channel(s)")


# ------------------------------------------------------------------ 7. the machine's failures
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=["disk_full", "read_only", "denied"])
def test_a_failing_write_mid_run_is_one_line_and_leaves_no_partial_file(script, files, capsys, tmp_path, monkeypatch,
                                                                         code):
    args = ["--ckpt", str(files["good"]), "--suite", suite_file(tmp_path, TINY), "--n", "8", "--no-progress",
            "--out", str(tmp_path / "ev")]
    real = Path.write_text

    def failing(self, text, *a, **k):
        if self.name.endswith(".tmp"):
            real(self, text[: len(text) // 2])  # a part written, then the disk is full
            raise OSError(code, os.strerror(code), str(self))
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(SystemExit) as exc:
        run_with_clean_errors(lambda: script.main(args), "evaluate.py")
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and "\n" not in err and os.strerror(code) in err, err
    assert not no_temporaries(tmp_path / "ev") and not (tmp_path / "ev" / "results.json").exists()


def test_featspace_stats_into_a_folder_is_one_line_and_leaves_nothing(files, capsys, tmp_path):
    (tmp_path / "out").mkdir()
    assert "is a folder" in featspace_error(capsys, "stats", "--ckpt", str(files["good"]), "--out",
                                            str(tmp_path / "out"))
    assert not list((tmp_path / "out").iterdir()) and not no_temporaries(tmp_path)


def test_the_zoo_refuses_an_output_that_is_a_file_before_training(capsys, tmp_path):
    from advtrain.zoo import main

    (tmp_path / "zoo").write_text("a file")
    with pytest.raises(SystemExit) as exc:
        run_with_clean_errors(lambda: main(["--out", str(tmp_path / "zoo"), "--no-progress"]), "zoo")
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "is a file, not a folder" in err and "\n" not in err


@pytest.fixture
def zoo(trained_c4, tmp_path) -> Path:
    for name in ("a", "b"):
        (tmp_path / "zoo" / name).mkdir(parents=True)
        lightning_ckpt(trained_c4.state_dict(), tmp_path / "zoo" / name / "last.ckpt")
    return tmp_path / "zoo"


@pytest.mark.parametrize("content,msg", [('{"context": {"ind', "is not a readable transfer.json (damaged or truncated)"),
                                         ("[]", "is not a readable transfer.json"),
                                         ('{"context": {"indices": [0], "quantize": true, "batch_size": 100}, '
                                          '"cells": {}}', "holds a transfer evaluation of other indices")],
                         ids=["truncated", "a_list", "other_images"])
def test_a_bad_transfer_json_is_named_and_kept(script, zoo, capsys, tmp_path, content, msg):
    out = tmp_path / "tr"
    out.mkdir()
    (out / "transfer.json").write_text(content)
    suite = suite_file(tmp_path, [{"attack": "fgsm", "budgets": [0.3]}])
    err = cli_error(script, capsys, "--transfer", "--zoo", str(zoo), "--suite", suite, "--n", "8", "--out", str(out),
                    "--no-progress")
    assert msg in err and str(out / "transfer.json") in err
    assert (out / "transfer.json").read_text() == content


def test_a_model_factory_that_raises_is_one_line(script, capsys, tmp_path, monkeypatch):
    (tmp_path / "broken_factory.py").write_text("def load():\n    raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = cli_error(script, capsys, "--model", "broken_factory:load", "--data", "mnist_embedded", "--out",
                    str(tmp_path / "ev"))
    assert "load() raised RuntimeError: no GPU here" in err


# ------------------------------------------------------------------ 8. messages that name what is wrong
@pytest.fixture(scope="module")
def weights(trained_c4, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    state = trained_c4.state_dict()
    nan = {k: v.clone() for k, v in state.items()}
    nan["net.classifier.weight"][0, 0] = float("nan")
    torch.save(nan, d / "nan.pt")
    torch.manual_seed(0)
    torch.save(build_model("c4", num_classes=3).state_dict(), d / "three.pt")
    return {"nan": d / "nan.pt", "three": d / "three.pt",
            "three.ckpt": lightning_ckpt(build_model("c4", num_classes=3).state_dict(), d / "three.ckpt")}


def test_nan_weights_are_reported_as_nan_not_as_unsafe(script, weights, capsys, tmp_path):
    err = cli_error(script, capsys, "--model", "c4", "--weights", str(weights["nan"]), "--data", "mnist_embedded",
                    "--out", str(tmp_path / "ev"))
    assert "tensor 'net.classifier.weight' has 1 non-finite" in err and "weights_only" not in err


@pytest.mark.parametrize("how", ["--weights", "--ckpt"])
def test_weights_of_another_shape_name_the_tensor_and_both_shapes(script, weights, capsys, tmp_path, how):
    args = (["--model", "c4", "--weights", str(weights["three"]), "--data", "mnist_embedded"] if how == "--weights"
            else ["--ckpt", str(weights["three.ckpt"])])
    err = cli_error(script, capsys, *args, "--out", str(tmp_path / "ev"))
    assert "'net.classifier.weight' is (3, " in err and "in the file, (10, " in err and "in the model" in err, err


DEFENSE_OPTIONS = [("median:size=abc", "option 'size' must be an integer, got str 'abc'"),
                   ("median:size=2.5", "option 'size' must be an integer, got float 2.5"),
                   ("bit_depth:bits=three", "option 'bits' must be an integer"),
                   ("pixel_deflection:use_map=maybe", "option 'use_map' must be true or false, got str 'maybe'"),
                   ("pixel_deflection:sigma=wide", "option 'sigma' must be a number")]


@pytest.mark.parametrize("defense,msg", DEFENSE_OPTIONS, ids=[d for d, _ in DEFENSE_OPTIONS])
def test_a_defense_option_of_the_wrong_type_names_it(script, files, capsys, tmp_path, defense, msg):
    assert msg in cli_error(script, capsys, "--ckpt", str(files["good"]), "--defense", defense, "--n", "8",
                            "--suite", suite_file(tmp_path, TINY), "--out", str(tmp_path / "ev"))


def test_transfer_sources_are_resolved_inside_the_zoo(zoo, tmp_path):
    from advtrain.cli.transfer import parse_args, prepare

    suite = suite_file(tmp_path, [{"attack": "fgsm", "budgets": [0.3]}])
    job = prepare(parse_args(["--zoo", str(zoo), "--sources", "a", "--suite", suite, "--n", "4",
                              "--out", str(tmp_path / "tr")]))
    assert list(job["sources"]) == ["a"] and sorted(job["targets"]) == ["a", "b"]


def test_an_unknown_transfer_source_lists_the_zoo(script, zoo, capsys, tmp_path):
    err = cli_error(script, capsys, "--transfer", "--zoo", str(zoo), "--sources", "c", "--n", "4",
                    "--out", str(tmp_path / "tr"))
    assert "nor a member of the zoo" in err and "(a, b)" in err


@pytest.mark.parametrize("suite", ["reliable", "unrestricted_mnist"])
def test_a_transfer_suite_of_minimum_norm_or_unrestricted_attacks_is_refused(script, zoo, capsys, tmp_path, suite):
    err = cli_error(script, capsys, "--transfer", "--zoo", str(zoo), "--suite", suite, "--n", "4",
                    "--out", str(tmp_path / "tr"))
    assert "transfer crafts adversarials at a fixed budget" in err


def test_a_lightning_option_error_is_one_line(capsys):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    def main():
        raise MisconfigurationException("`max_epochs` must be a non-negative integer or -1. You passed in -5.")

    with pytest.raises(SystemExit) as exc:
        run_with_clean_errors(main, "train.py")
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == "train.py: error: `max_epochs` must be a non-negative integer or -1. " \
                                          "You passed in -5."


def test_train_py_refuses_negative_max_epochs_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--trainer.max_epochs", "-5",
                           "--trainer.default_root_dir", str(tmp_path)], env=env(), capture_output=True, text=True,
                          cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]  # Lightning logs "Seed set"
    assert lines[-1] == "train.py: error: `max_epochs` must be a non-negative integer or -1. You passed in -5."
