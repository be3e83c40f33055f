"""The thesis protocol end to end (thesis 3.3.2, 5.3): suites, run_suite, incremental results."""
import json
import math

import pytest
import torch
import yaml

from advtrain.attacks import ATTACKS
from advtrain.attacks.gradient import FGSM, PGDL2
from advtrain.evaluation import load_suite, run_suite
from advtrain.evaluation.report import plot_curves, write_report
from advtrain.evaluation.suite import THESIS_SETTINGS, quick_suite

#: full/quick suites: every registered attack but the unrestricted family (D2B, FSA need fitted files)
BUDGETED = {n for n in ATTACKS.canonical() if ATTACKS[n].family != "unrestricted"}

N = 32  # test images N'


def loader(mnist_dm):
    return mnist_dm.test_dataloader()


def test_full_suite_has_every_registered_attack_with_thesis_settings():
    specs = {s.attack: s for s in load_suite("full", "mnist_embedded")}
    assert set(specs) == BUDGETED
    for name, s in specs.items():
        if s.family == "distortion" and name in THESIS_SETTINGS:
            assert s.budgets and len(s.budgets) >= 6, name  # an eps sweep
    assert specs["ifgsm"].options["alpha"] == 0.08  # thesis 5.3.1
    quick = {s.attack: s for s in load_suite("quick", "mnist_embedded")}
    assert set(quick) == set(specs)
    assert all(len(s.budgets) == 3 for s in quick.values() if s.budgets)
    assert all(s.options.get("steps", 0) <= 10 for s in quick.values())


@pytest.mark.parametrize("entry,msg", [
    ({"attack": "pgd_l3"}, "unknown attack 'pgd_l3'; known: .*pgd_l2"),
    ({"attack": "pgd_l2", "options": {"stpes": 5}}, "attack 'pgd_l2' has no option 'stpes'; valid options: eps, steps"),
    ({"attack": "pgd_l2", "budget": [1.0]}, "unknown key 'budget'; valid keys: attack, label, options, budgets"),
    ({"attack": "ddn", "budgets": [1.0]}, "budgets .* need a distortion attack"),
    ({"attack": "fgsm", "budgets": [0.1], "options": {"eps": 0.2}}, "option 'eps' is set by the evaluation"),
])
def test_bad_suite_entries_fail_before_running(entry, msg, tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump([entry]))
    with pytest.raises(ValueError, match=msg):
        load_suite(str(path))


def test_unknown_suite_name_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="neither a file nor a known suite .*full, quick"):
        load_suite("fulll")


def _check_variant(stats: dict, n: int) -> None:
    p = torch.tensor(stats["curve"]["p"])
    assert bool((p[1:] >= p[:-1]).all()), "P(D) must be non-decreasing"
    assert p[-1].item() == pytest.approx(stats["p_suc"])  # P(D_max) = P_suc
    if stats["n_suc"]:
        assert stats["curve"]["d"][-1] == pytest.approx(stats["d_max"])
    assert len(stats["per_sample"]["l2"]) == n
    l2 = [d for d in stats["per_sample"]["l2"] if d is not None]
    assert len(l2) == stats["n_suc"]
    if l2:
        assert stats["d_bar"] == pytest.approx(sum(l2) / len(l2))
        assert stats["p_upp"] == pytest.approx(sum(d <= stats["d_upp"] for d in l2) / n)


def test_every_registered_attack_end_to_end_on_trained_c4(trained_c4, mnist_dm, tmp_path):
    """The full suite's attacks and settings on C4, quantized and not; within the default test
    budget sweeps keep 2 budgets and iterations are capped at 5 (the full suite: slow test below)."""
    suite = quick_suite("mnist_embedded", budgets=2, max_steps=5, max_search_steps=1)
    res = run_suite(trained_c4, loader(mnist_dm), suite, n=20, out_dir=tmp_path, progress=False)
    ctx = res["context"]
    assert ctx["n_prime"] == 20 and 0.9 <= ctx["accuracy"] <= 1 and len(ctx["indices"]) == ctx["n"]
    assert set(res["attacks"]) == BUDGETED
    for label, e in res["attacks"].items():
        assert e["status"] == "done", (label, e.get("error"))
        assert (e["grads"] > 0 or not ATTACKS[e["attack"]].uses_gradients) and e["time_s"] > 0
        assert e["zero_grad_rate"] == 0.0
        for v in ("quantized", "unquantized"):
            _check_variant(e[v], ctx["n"])
        if e["family"] == "distortion":
            assert len(e["unquantized"]["p_suc_by_budget"]) == len(e["key"]["budgets"])
    for v in ("quantized", "unquantized"):
        wc = res["worst_case"][v]
        _check_variant(wc, ctx["n"])
        assert wc["p_suc"] >= max(e[v]["p_suc"] for e in res["attacks"].values())
        for i, d in enumerate(wc["per_sample"]["l2"]):  # the least distortion any attack needed
            ds = [e[v]["per_sample"]["l2"][i] for e in res["attacks"].values()]
            assert d == (min(x for x in ds if x is not None) if any(x is not None for x in ds) else None)
    # quantized images lie on the 8-bit grid: rounding changes some distortions
    q, u = res["attacks"]["fgsm"]["quantized"], res["attacks"]["fgsm"]["unquantized"]
    assert q["per_sample"]["l2"] != u["per_sample"]["l2"]
    # strong attacks on an undefended MNIST C4 (thesis Table 5.2: P_suc ~ 1)
    assert res["attacks"]["pgd_l2"]["unquantized"]["p_suc"] >= 0.9
    assert json.loads((tmp_path / "results.json").read_text())["attacks"].keys() == res["attacks"].keys()
    write_report(res, tmp_path / "report.md")
    plot_curves(res, tmp_path / "curves.png")
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {label} |" in report for label in res["attacks"]) and "worst case" in report
    assert (tmp_path / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_full_suite_end_to_end_on_trained_c4(trained_c4, mnist_dm, tmp_path):
    res = run_suite(trained_c4, loader(mnist_dm), "full", n=64, out_dir=tmp_path, progress=False)
    assert set(res["attacks"]) == BUDGETED
    for e in res["attacks"].values():
        assert e["status"] == "done"
        for v in ("quantized", "unquantized"):
            _check_variant(e[v], res["context"]["n"])
    assert res["worst_case"]["quantized"]["p_suc"] >= 0.99


SMALL = [{"attack": "fgsm", "budgets": [0.2, 0.3]},
         {"attack": "pgd_l2", "options": {"steps": 5, "early_stop": True}, "budgets": [2.0, 3.0]}]


def test_a_crash_keeps_earlier_results_and_a_rerun_skips_them(trained_c4, mnist_dm, tmp_path, monkeypatch):
    def boom(self, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(PGDL2, "_run", boom)
    first = run_suite(trained_c4, loader(mnist_dm), SMALL, n=N, out_dir=tmp_path, progress=False, quantize="no")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["attacks"]["fgsm"]["status"] == "done"
    assert saved["attacks"]["pgd_l2"] == {**saved["attacks"]["pgd_l2"], "status": "error", "error": "RuntimeError: boom"}
    assert any("pgd_l2: the attack crashed" in w for w in first["warnings"])
    monkeypatch.undo()
    monkeypatch.setattr(FGSM, "_run", boom)  # would crash if fgsm were run again
    second = run_suite(trained_c4, loader(mnist_dm), SMALL, n=N, out_dir=tmp_path, progress=False, quantize="no")
    assert second["attacks"]["fgsm"] == saved["attacks"]["fgsm"]
    assert second["attacks"]["pgd_l2"]["status"] == "done"
    assert not math.isnan(second["worst_case"]["unquantized"]["p_suc"])
    # a different setting (here the quantization) is refused: the finished results are neither mixed nor lost
    kept = (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError, match="holds results of another evaluation \\(different quantize, threats"):
        run_suite(trained_c4, loader(mnist_dm), SMALL[1:], n=N, out_dir=tmp_path, progress=False, quantize="yes")
    assert (tmp_path / "results.json").read_text() == kept


def test_run_suite_rejects_bad_arguments(trained_c4, mnist_dm):
    with pytest.raises(ValueError, match="n=501 is larger than the test set \\(500 images\\)"):
        run_suite(trained_c4, loader(mnist_dm), SMALL, n=501, progress=False)
    with pytest.raises(ValueError, match="quantize must be one of both, no, yes"):
        run_suite(trained_c4, loader(mnist_dm), SMALL, quantize="maybe")
