"""Threat models as an axis of the evaluation (issue 20): the norm of each attack, the robust accuracy
at the standard budgets (RobustBench's convention), the cascade, the 8-bit rounding inside the ball,
the report's first table, results.json's version, and the one-line errors on bad threat/budget input."""
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advtrain.evaluation import load_suite, run_suite
from advtrain.evaluation.report import headline_lines, plot_curves, write_report
from advtrain.evaluation.suite import AttackSpec
from advtrain.evaluation.threats import STANDARD_BUDGETS, parse_budgets, parse_threats, threat_models
from advtrain.ops.norms import NORMS, quantize, quantize_within

SUITE = [
    {"attack": "apgd_linf", "label": "apgd_linf", "options": {"steps": 5}, "budgets": [0.3]},
    {"attack": "fmn_linf", "options": {"steps": 10}, "quantize_mode": "attack"},
    {"attack": "apgd_t_linf", "options": {"steps": 5, "n_target_classes": 2}, "budgets": [0.3], "cascade": True},
    {"attack": "ddn", "options": {"steps": 10}},
]


@pytest.fixture(scope="module")
def batch(mnist_dm):
    xs, ys = zip(*[mnist_dm.test_set[i] for i in range(24)])
    return torch.stack(xs), torch.tensor(ys)


def loader(batch):
    return DataLoader(TensorDataset(*batch), batch_size=12)


@pytest.fixture(scope="module")
def evaluated(trained_c4, batch, tmp_path_factory):
    out = tmp_path_factory.mktemp("threats")
    res = run_suite(trained_c4, loader(batch), SUITE, n=24, batch_size=12, out_dir=out, progress=False)
    return res, out


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("linf", 8 / 255), ("l2", 2.0), ("l2", 0.5)])
def test_quantize_within_is_an_8bit_image_inside_the_ball(norm, eps):
    """On the grid, inside the ball, and the plain 8-bit rounding wherever that stays inside."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 1, 8, 8)) / 255
    d = torch.randn_like(x)
    d = d * eps / NORMS[norm](d).view(-1, 1, 1, 1)  # on the sphere: where plain rounding leaves the ball
    x_adv = (x + d).clamp(0, 1)
    q = quantize_within(x_adv, x, eps, norm)
    assert torch.equal(q, quantize(q))
    assert bool((NORMS[norm](q - x) <= eps * (1 + 1e-5)).all())
    rounded = quantize(x_adv)
    inside = (rounded - x).abs() <= eps * (1 + 1e-5) if norm == "linf" else \
        (NORMS[norm](rounded - x) <= eps * (1 + 1e-5)).view(-1, 1, 1, 1).expand_as(x)
    assert torch.equal(q[inside], rounded[inside])


def test_each_attack_belongs_to_the_norm_it_bounds_or_minimizes():
    specs = {s.label: s.threat for s in load_suite("reliable", "mnist_embedded")}
    assert specs["apgd_ce"] == specs["ddn"] == specs["bp"] == "l2"
    assert {specs[k] for k in ("apgd_ce_linf", "apgd_t_linf", "fab_t_linf", "square_linf", "fmn_linf")} == {"linf"}
    assert {specs[k] for k in ("apgd_ce_l1", "fab_t_l1", "apgd_t_l1")} == {"l1"}
    unrestricted = AttackSpec.__new__(AttackSpec)
    unrestricted.attack = "fsa"
    assert unrestricted.threat is None  # no norm: reported apart, kept whatever --threat says


@pytest.mark.parametrize("dataset,group", [("mnist_embedded", "mnist"), ("cifar10", "cifar10"),
                                           ("imagefolder", "imagenet")])
def test_reliable_linf_ensemble_is_autoattack_standard_at_the_standard_budget(dataset, group):
    """APGD-CE, APGD-T on 9 targets, FAB-T, Square with 5,000 queries at the standard Linf eps
    (Croce & Hein 2020's 'standard' version), and the minimum-norm FMN-Linf; the L2 fixed-budget
    attacks include the standard L2 budget; an override moves them."""
    specs = {s.label: s for s in load_suite("reliable", dataset)}
    eps = STANDARD_BUDGETS[group]["linf"]
    for label in ("apgd_ce_linf", "apgd_t_linf", "square_linf"):
        assert specs[label].budgets == [eps]
    assert specs["apgd_t_linf"].build(eps).n_target_classes == 9
    assert specs["square_linf"].options["queries"] == 5000
    assert specs["fab_t_linf"].options["targeted"] and specs["fab_t_linf"].family == "success"
    assert specs["fmn_linf"].family == "success"
    assert specs["apgd_t_linf"].cascade and specs["square_linf"].cascade and not specs["apgd_ce_linf"].cascade
    for label in ("apgd_ce", "apgd_t", "square"):
        assert STANDARD_BUDGETS[group]["l2"] in specs[label].budgets
    moved = {s.label: s for s in load_suite("reliable", dataset, {"linf": 0.1})}
    assert moved["apgd_t_linf"].budgets == [0.1]


@pytest.mark.parametrize("dataset,group", [("mnist_embedded", "mnist"), ("cifar10", "cifar10")])
def test_reliable_l1_ensemble_is_autoattack_standard_but_square(dataset, group):
    """AutoAttack's standard L1 version (Croce & Hein 2021): APGD-CE-L1 with 5 restarts, APGD-T-L1 on
    5 targets (cascaded), both with the 3-2-1 eps schedule, and FAB-T in L1, at the standard L1 budget
    (MNIST 10, CIFAR-10 12); ImageNet has no standard L1 budget: no L1 entries unless one is given."""
    assert STANDARD_BUDGETS["mnist"]["l1"] == 10.0 and STANDARD_BUDGETS["cifar10"]["l1"] == 12.0
    specs = {s.label: s for s in load_suite("reliable", dataset)}
    eps = STANDARD_BUDGETS[group]["l1"]
    ce, t = specs["apgd_ce_l1"].build(eps), specs["apgd_t_l1"].build(eps)
    assert specs["apgd_ce_l1"].budgets == specs["apgd_t_l1"].budgets == [eps]
    assert ce.restarts == 5 and ce.loss == "ce" and ce.decreasing_eps and ce.steps == 100
    assert t.n_target_classes == 5 and t.restarts == 1 and t.decreasing_eps and t.loss == "dlr"
    assert specs["apgd_t_l1"].cascade and not specs["apgd_ce_l1"].cascade
    assert specs["fab_t_l1"].family == "success" and specs["fab_t_l1"].options["targeted"]
    assert load_suite("reliable", dataset, {"l1": 3.0})[-1].budgets == [3.0]
    assert not any(s.threat == "l1" for s in load_suite("reliable", "imagefolder"))
    assert {s.label for s in load_suite("reliable", "imagefolder", {"l1": 60.0}) if s.threat == "l1"} == \
        {"apgd_ce_l1", "fab_t_l1", "apgd_t_l1"}


def test_l1_threat_model_end_to_end(trained_c4, batch, tmp_path):
    """--threat l1: only the L1 attacks run; the L1 worst case, robust accuracy at the budget and
    per-image distortions in L1 land in results.json and report.md, both variants inside the ball."""
    suite = [{"attack": "apgd_l1", "label": "apgd_ce_l1", "options": {"steps": 6}, "budgets": [3.0]},
             {"attack": "apgd_t_l1", "label": "apgd_t_l1", "options": {"steps": 6, "n_target_classes": 2},
              "budgets": [3.0], "cascade": True},
             {"attack": "fab_l1", "label": "fab_t_l1", "options": {"steps": 3, "targeted": True, "n_target_classes": 1},
              "quantize_mode": "attack"},
             {"attack": "ddn", "options": {"steps": 5}, "quantize_mode": "attack"}]
    res = run_suite(trained_c4, loader((batch[0][:12], batch[1][:12])), suite, n=12, threats="l1", budgets="l1=3",
                    out_dir=tmp_path, progress=False)
    assert list(res["attacks"]) == ["apgd_ce_l1", "apgd_t_l1", "fab_t_l1"] and list(res["threat_models"]) == ["l1"]
    tm = res["threat_models"]["l1"]
    assert tm["budget"] == 3.0 and tm["attacks"] == ["apgd_ce_l1", "apgd_t_l1", "fab_t_l1"]
    for v in ("unquantized", "quantized"):
        assert 0.0 <= tm[v]["robust_accuracy"] <= 1.0 and tm[v]["measured_at_budget"]
        for label in ("apgd_ce_l1", "apgd_t_l1"):
            d = [e for e in res["attacks"][label][v]["per_sample"]["l1"] if e is not None]
            assert max(d, default=0.0) <= 3.0 * (1 + 1e-5)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["threat_models"]["l1"]["unquantized"]["robust_accuracy"] == tm["unquantized"]["robust_accuracy"]
    write_report(res, tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "| L1 | 3 |" in report and "### L1 attacks" in report


def test_robust_accuracy_counts_clean_errors_and_every_attack_of_the_norm():
    """RobustBench: robust = correct and unbroken within eps by any attack of that norm, over all N'
    images; an L2 attack's adversarial never counts for Linf; the first attack (suite order) gets the
    image; a fixed-budget attack only at another eps does not measure the budget."""
    def entry(norm, linf, family="success", budgets=None, ran=None):
        stats = {"per_sample": {"linf": linf, "l2": linf, "ran": ran or [True] * len(linf)}}
        return {"status": "done", "norm": norm, "family": family, "key": {"budgets": budgets},
                "unquantized": stats}
    res = {"context": {"n_prime": 5, "threats": ["linf"], "budgets": {"linf": 0.3}}, "attacks": {
        "a": entry("linf", [0.3000001, None, 0.5, None], "distortion", [0.3]),
        "b": entry("linf", [0.1, 0.2, None, None]),
        "c": entry("l2", [0.01, 0.01, 0.01, 0.01]),
    }}
    t = threat_models(res, ("unquantized",), 10)["linf"]["unquantized"]
    assert t["broken_at_budget"] == 2 and t["first_broken_by"] == {"a": 1, "b": 1}
    assert t["robust_accuracy"] == pytest.approx(2 / 5)  # 4 correct of 5, 2 broken
    assert t["per_sample"] == [0.1, 0.2, 0.5, None]
    res["attacks"]["b"]["family"], res["attacks"]["b"]["key"]["budgets"] = "distortion", [0.5]
    res["attacks"]["a"]["key"]["budgets"] = [0.5]
    assert threat_models(res, ("unquantized",), 10)["linf"]["unquantized"]["robust_accuracy"] is None


def test_threat_axis_end_to_end(evaluated):
    res, out = evaluated
    assert res["version"] == 2 and res["context"]["threats"] == ["linf", "l2"]
    assert res["context"]["budgets"] == {"linf": 0.3, "l2": 2.0}
    assert [res["attacks"][k]["norm"] for k in ("apgd_linf", "fmn_linf", "apgd_t_linf", "ddn")] == \
        ["linf", "linf", "linf", "l2"]
    tm = res["threat_models"]
    assert tm["linf"]["attacks"] == ["apgd_linf", "fmn_linf", "apgd_t_linf"] and tm["l2"]["attacks"] == ["ddn"]
    n_prime, n = res["context"]["n_prime"], res["context"]["n"]
    for v in ("quantized", "unquantized"):
        for norm, t in tm.items():
            t = t[v]
            eps = res["context"]["budgets"][norm]
            # robust accuracy from the per-image worst case of that norm's attacks, over all N' images
            broken = sum(d is not None and d <= eps * (1 + 1e-5) for d in t["per_sample"])
            assert t["robust_accuracy"] == pytest.approx((n - broken) / n_prime)
            assert sum(t["first_broken_by"].values()) == broken == t["broken_at_budget"]
        # the cascade: APGD-T ran exactly on the images the earlier Linf attacks left unbroken at 0.3
        # in both variants
        earlier = [res["attacks"][k] for k in ("apgd_linf", "fmn_linf")]
        done = [all(any(e[w]["per_sample"]["linf"][i] is not None and e[w]["per_sample"]["linf"][i] <= 0.3 * (1 + 1e-5)
                        for e in earlier) for w in ("quantized", "unquantized")) for i in range(n)]
        assert res["attacks"]["apgd_t_linf"][v]["per_sample"]["ran"] == [not d for d in done]
        assert res["attacks"]["apgd_t_linf"]["n_ran"] == n - sum(done)
    assert json.loads((out / "results.json").read_text())["threat_models"].keys() == tm.keys()


def test_report_opens_with_the_robustbench_table(evaluated, tmp_path):
    res, _ = evaluated
    write_report(res, tmp_path / "report.md")
    plot_curves(res, tmp_path / "curves.png")
    lines = (tmp_path / "report.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert lines[first].startswith("| threat model | budget | images | clean accuracy | robust accuracy")
    rows = lines[first + 2:first + 6]
    assert [r.split(" | ")[:3] for r in rows] == [["| Linf", "0.3", "quantized"], ["| Linf", "0.3", "unquantized"],
                                                  ["| L2", "2", "quantized"], ["| L2", "2", "unquantized"]]
    t = res["threat_models"]["linf"]["quantized"]
    assert f"**{t['robust_accuracy']:.3f}**" in rows[0]
    assert "apgd_t_linf*" in "\n".join(headline_lines(res)) or res["threat_models"]["linf"]["quantized"][
        "first_broken_by"]["apgd_t_linf"] == 0
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_an_older_results_json_is_refused_not_mixed(trained_c4, batch, tmp_path):
    old = {"context": {"dataset": "mnist_embedded"}, "attacks": {}}  # no version: before threat models
    (tmp_path / "results.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="another version of advtrain .results format 1, this one writes 2"):
        run_suite(trained_c4, loader(batch), SUITE[:1], n=24, out_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "results.json").read_text()) == old


@pytest.mark.parametrize("kwargs,message", [
    ({"threats": "l3"}, r"--threat: unknown norm 'l3'; known: linf, l2, l1"),
    ({"threats": "l1"}, r"--threat l1: the suite has no attack for l1 \(its threat models: linf, l2\)"),
    ({"threats": "l2", "budgets": "linf=0.3"}, r"--budget linf: not a threat model of this evaluation \(l2\)"),
    ({"budgets": "lx=0.3"}, r"--budget: unknown norm 'lx'"),
    ({"budgets": "linf=-1"}, r"--budget linf=-1: the budget must be positive"),
    ({"budgets": "linf=abc"}, r"--budget linf='abc': the budget must be a number"),
])
def test_bad_threat_or_budget_is_one_line_before_any_attack(kwargs, message, trained_c4, batch, tmp_path, monkeypatch):
    import advtrain.evaluation.protocol as protocol
    monkeypatch.setattr(protocol, "attack_batch", lambda *a, **k: pytest.fail("an attack ran"))
    with pytest.raises(ValueError, match=message) as err:
        run_suite(trained_c4, loader(batch), SUITE, n=24, out_dir=tmp_path, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "results.json").exists()


def test_threat_selection_leaves_the_other_norms_attacks_out(trained_c4, batch):
    res = run_suite(trained_c4, loader(batch), SUITE, n=24, progress=False, threats="l2", quantize="no")
    assert list(res["attacks"]) == ["ddn"] and list(res["threat_models"]) == ["l2"]


def test_parsers():
    assert parse_threats("L2, linf,l2") == ["l2", "linf"] and parse_threats(None) is None
    assert parse_budgets("linf=0.3,l2=2") == {"linf": 0.3, "l2": 2.0} and parse_budgets(None) == {}


@pytest.mark.parametrize("args,message", [
    (["--threat", "l3"], "--threat: unknown norm 'l3'; known: linf, l2, l1"),
    (["--suite", "smoke", "--threat", "l1"], "--threat l1: the suite has no attack for l1 (its threat models: linf, l2)"),
    (["--data", "imagefolder", "--threat", "l1"],
     "--threat l1: the suite has no attack for l1 (its threat models: linf, l2)"),
    (["--threat", "linf", "--budget", "l2=2"], "--budget l2: not a threat model of this evaluation (linf)"),
    (["--budget", "l9=2"], "--budget: unknown norm 'l9'; known: linf, l2, l1"),
])
def test_evaluate_cli_refuses_bad_threats_in_one_line(args, message, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from advtrain.cli import run_with_clean_errors
    spec = importlib.util.spec_from_file_location("evaluate_script", Path(__file__).parents[1] / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exc:
        run_with_clean_errors(lambda: script.main(["--model", "c4", "--data", "mnist_embedded", "--out",
                                                   str(tmp_path), *args]), "evaluate.py")
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == f"evaluate.py: error: {message}"
    assert not (tmp_path / "results.json").exists()
