"""run_suite's steps: the worst case and the sanity checks are concluded once per finished attack
(issue 15: they were computed twice), a rerun with nothing left to run concludes once, and the
examples behind examples.png are the per-image worst cases of the finished attacks."""
import pytest
import torch

import advtrain.evaluation.worst_case as conclusion
from advtrain.attacks.gradient import PGDL2
from advtrain.evaluation import run_suite, sanity
from advtrain.evaluation.examples import EASIEST, HARDEST

SUITE = [{"attack": "fgsm", "budgets": [0.3]}, {"attack": "fgsm", "label": "fgsm_small", "budgets": [0.1]}]
N = 16


@pytest.fixture
def counted(monkeypatch):
    """Counts of the sanity checks' and the worst case's evaluations during a run."""
    calls = {"sanity_checks": 0, "worst_case": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(conclusion, "sanity_checks", counting("sanity_checks", sanity.sanity_checks))
    monkeypatch.setattr(conclusion, "worst_case", counting("worst_case", conclusion.worst_case))
    return calls


def test_worst_case_and_checks_are_computed_once_per_attack(trained_c4, mnist_dm, tmp_path, counted):
    res = run_suite(trained_c4, mnist_dm.test_dataloader(), SUITE, n=N, out_dir=tmp_path, progress=False,
                    quantize="no")
    assert counted == {"sanity_checks": 2, "worst_case": 2}  # one per attack, none at the end
    # the conclusion returned is the one of all attacks: the least distortion of the two per image
    per = [res["attacks"][k]["unquantized"]["per_sample"]["l2"] for k in ("fgsm", "fgsm_small")]
    least = [min([d for d in ds if d is not None], default=None) for ds in zip(*per)]
    assert res["worst_case"]["unquantized"]["per_sample"]["l2"] == least
    assert set(res["worst_case"]["unquantized"]["by_attack"]) == {"fgsm", "fgsm_small"}
    check_examples(res, tmp_path, mnist_dm)
    counted.update(sanity_checks=0, worst_case=0)
    again = run_suite(trained_c4, mnist_dm.test_dataloader(), SUITE, n=N, out_dir=tmp_path, progress=False,
                      quantize="no")
    assert counted == {"sanity_checks": 1, "worst_case": 1}  # nothing ran: concluded once from the file
    assert again["worst_case"] == res["worst_case"] and again["warnings"] == res["warnings"]


def check_examples(res: dict, out, mnist_dm) -> list[dict]:
    """examples.pt's rows: the images of least and of largest finite worst-case L2 (unquantized, the only
    variant scored), each with its true label, the model's other label and the adversarial of that L2."""
    rows = torch.load(out / "examples.pt", weights_only=True)
    wc = dict(zip(res["context"]["indices"], res["worst_case"]["unquantized"]["per_sample"]["l2"]))
    broken = sorted(d for d in wc.values() if d is not None)
    shown = [r for r in rows if r["l2"] is not None]
    assert [r["l2"] for r in shown] == pytest.approx(broken[:EASIEST] + broken[EASIEST:][-HARDEST:])
    for r in shown:
        assert r["l2"] == pytest.approx(wc[r["index"]]) and r["label"] == mnist_dm.test_set[r["index"]][1]
        assert r["pred"] != r["label"]
        # the perturbation is kept in float16 (relative error 1e-3): a display copy
        assert float((r["x_adv"] - r["x"]).norm()) == pytest.approx(r["l2"], rel=1e-2)
    unbroken = [k for k, d in wc.items() if d is None]
    assert [r["index"] for r in rows if r["l2"] is None] == unbroken[:len(rows) - len(shown)]
    return rows


def test_a_crashed_attack_leaves_no_examples_and_a_rerun_continues_them(trained_c4, mnist_dm, tmp_path, monkeypatch):
    calls = []
    run = PGDL2._run

    def second_batch_crashes(self, ctx):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return run(self, ctx)

    monkeypatch.setattr(PGDL2, "_run", second_batch_crashes)
    suite = [SUITE[0], {"attack": "pgd_l2", "options": {"steps": 5}, "budgets": [3.0]}]
    res = run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=N, batch_size=8, out_dir=tmp_path,
                    progress=False, quantize="no")
    assert res["attacks"]["pgd_l2"]["status"] == "error" and len(calls) == 2
    assert {r["attack"] for r in check_examples(res, tmp_path, mnist_dm)} <= {"fgsm", None}
    monkeypatch.undo()  # the rerun continues the examples with the retried attack's
    res = run_suite(trained_c4, mnist_dm.test_dataloader(), suite, n=N, batch_size=8, out_dir=tmp_path,
                    progress=False, quantize="no")
    assert res["attacks"]["pgd_l2"]["status"] == "done"
    assert "pgd_l2" in {r["attack"] for r in check_examples(res, tmp_path, mnist_dm)}


def test_the_model_modes_are_restored_after_a_run_and_after_an_error(trained_c4, mnist_dm):
    trained_c4.train()
    run_suite(trained_c4, mnist_dm.test_dataloader(), SUITE[:1], n=4, progress=False, quantize="no")
    assert all(m.training for m in trained_c4.modules())
    bad = torch.utils.data.DataLoader([(torch.zeros(1, 28, 28), 11)] * 4, batch_size=4)  # label 11 of 10 classes
    with pytest.raises(ValueError, match="labels must lie in"):
        run_suite(trained_c4, bad, SUITE[:1], progress=False, quantize="no")
    assert all(m.training for m in trained_c4.modules())
    trained_c4.eval()
