"""run_suite's steps: the worst case and the sanity checks are concluded once per finished attack
(issue 15: they were computed twice), and a rerun with nothing left to run concludes once."""
import pytest
import torch

import advtrain.evaluation.worst_case as conclusion
from advtrain.evaluation import run_suite, sanity

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
    counted.update(sanity_checks=0, worst_case=0)
    again = run_suite(trained_c4, mnist_dm.test_dataloader(), SUITE, n=N, out_dir=tmp_path, progress=False,
                      quantize="no")
    assert counted == {"sanity_checks": 1, "worst_case": 1}  # nothing ran: concluded once from the file
    assert again["worst_case"] == res["worst_case"] and again["warnings"] == res["warnings"]


def test_the_model_modes_are_restored_after_a_run_and_after_an_error(trained_c4, mnist_dm):
    trained_c4.train()
    run_suite(trained_c4, mnist_dm.test_dataloader(), SUITE[:1], n=4, progress=False, quantize="no")
    assert all(m.training for m in trained_c4.modules())
    bad = torch.utils.data.DataLoader([(torch.zeros(1, 28, 28), 11)] * 4, batch_size=4)  # label 11 of 10 classes
    with pytest.raises(ValueError, match="labels must lie in"):
        run_suite(trained_c4, bad, SUITE[:1], progress=False, quantize="no")
    assert all(m.training for m in trained_c4.modules())
    trained_c4.eval()
