"""The "not trustworthy" banner of report.md (issue 11) and the sanity checks that raise it, the
``reliable`` / ``thesis`` suites and evaluate.py's default."""
import importlib.util
from pathlib import Path

import pytest
import torch

from advtrain.attacks import ATTACKS
from advtrain.evaluation import load_suite
from advtrain.evaluation.metrics import summarize
from advtrain.evaluation.report import write_report
from advtrain.evaluation.sanity import BLACK_BOX, BUDGET, UNBOUNDED, failed_checks, sanity_warnings
from advtrain.evaluation.suite import _reliable_entries

D_UPP = 2.0


def entry(l2: list, family: str = "success", grads_per_run: int = 20, by_budget: list | None = None) -> dict:
    """A results entry as run_suite writes it, from per-image distortions (None = attack failed)."""
    found = torch.tensor([d is not None for d in l2])
    dist = torch.tensor([d if d is not None else 0.0 for d in l2], dtype=torch.float64)
    stats = summarize(found, dist, D_UPP)
    stats.update(linf_mean=0.1, per_sample={"l2": l2, "linf": l2}, p_suc_by_budget=by_budget or [])
    return {"attack": "x", "family": family, "status": "done", "grads": grads_per_run,
            "grads_per_run": grads_per_run, "zero_grad_rate": 0.0, "time_s": 1.0, "quantized": stats}


def results(**attacks) -> dict:
    res = {"context": {"d_upp": D_UPP, "n_prime": 4, "n": 4, "accuracy": 1.0}, "attacks": attacks}
    res["warnings"], res["failed_checks"] = sanity_warnings(res), failed_checks(res)
    return res


GOOD = entry([0.5, 1.0, 1.5, 2.5])


def test_passing_checks_give_no_banner(tmp_path):
    res = results(bp=GOOD, square=entry([1.0, 2.5, None, None], "distortion", 0))
    assert res["failed_checks"] == []
    write_report(res, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "NOT TRUSTWORTHY" not in text and "- all passed" in text


@pytest.mark.parametrize("attacks,check", [
    # an unbounded attack failing on 1 of 4 images (0.75 < 0.95)
    ({"ddn": entry([0.5, 1.0, 1.5, None])}, UNBOUNDED),
    # Square (no gradients) finds 3 images within D = 1 where the white-box attacks find one
    ({"bp": GOOD, "square": entry([0.9, 0.9, 0.9, None], "distortion", 0)}, BLACK_BOX),
    # success 0.75 at eps 1 but 0.25 at eps 2
    ({"bp": GOOD, "pgd": entry([1.0, None, None, None], "distortion", 10,
                               [{"eps": 1.0, "p_suc": 0.75}, {"eps": 2.0, "p_suc": 0.25}])}, BUDGET),
])
def test_a_failed_check_opens_the_report_with_a_banner_naming_it(attacks, check, tmp_path):
    res = results(**attacks)
    assert res["failed_checks"] == [check]
    write_report(res, tmp_path / "report.md")
    lines = (tmp_path / "report.md").read_text().splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("| attack"))
    banner = [i for i, line in enumerate(lines) if "NOT TRUSTWORTHY" in line]
    assert banner and banner[0] < 5 < first_table, "the banner must open the report, above the tables"
    assert check in lines[banner[0]]
    assert any(line.startswith("- WARNING:") for line in lines[first_table:])  # details stay at the end


def test_black_box_check_compares_with_the_white_box_worst_case():
    """Square beating one white-box attack is no alarm when another white-box attack covers it."""
    weak = entry([None, None, 1.8, 2.5])
    square = entry([1.0, 1.2, None, None], "distortion", 0)
    checks = failed_checks(results(ddn=weak, bp=GOOD, square=square))
    assert BLACK_BOX not in checks  # bp's 0.5 / 1.0 beat Square's 1.0 / 1.2
    assert BLACK_BOX in failed_checks(results(ddn=weak, square=square))


def test_thesis_suite_is_the_former_full_suite():
    assert [s.as_dict() for s in load_suite("thesis")] == [s.as_dict() for s in load_suite("full")]


def test_reliable_suite_names_its_missing_attacks_or_loads():
    """Until every attack of the ensemble is registered, loading it fails naming exactly the missing
    ones (never a silently smaller worst case); once they are, it has AutoAttack's four attacks at
    L2 budgets up to D_upp and the minimum-norm attacks."""
    names = [e["attack"] for e in _reliable_entries("mnist")]
    missing = [n for n in names if n not in ATTACKS]
    if missing:
        with pytest.raises(ValueError, match="not registered: " + ", ".join(missing) + ";"):
            load_suite("reliable", "mnist_embedded")
        return
    specs = {s.label: s for s in load_suite("reliable", "mnist_embedded")}
    assert {"apgd_ce", "apgd_t", "fab_t", "square", "fmn", "bp", "ddn"} <= set(specs)
    for label in ("apgd_ce", "apgd_t", "square"):  # every budget ends at D_upp
        assert specs[label].budgets[-1] == D_UPP
    assert all(specs[k].family == "success" for k in ("fab_t", "fmn", "bp", "ddn"))
    assert specs["bp"].options["steps"] >= 100 and specs["ddn"].options["steps"] >= 300


def test_evaluate_defaults_to_the_reliable_suite():
    path = Path(__file__).resolve().parents[1] / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.parse_args(["--ckpt", "x.ckpt"]).suite == "reliable"
