"""The catastrophic-overfitting guard: its rule, what it does when it fires, and (slow) a real CO of plain
FGSM training caught within one check interval."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from advtrain.callbacks.overfitting_guard import (CatastrophicOverfittingGuard, CatastrophicOverfittingWarning,
                                                  collapsed)


@pytest.mark.parametrize("pgd, fgsm, best, expected", [
    (0.10, 0.80, 0.60, True),    # PGD collapsed, FGSM high: the CO signature
    (0.10, 0.15, 0.60, False),   # both low: a weak (or diverged) model, not CO
    (0.40, 0.80, 0.60, False),   # PGD fell by a third only
    (0.00, 0.90, 0.00, False),   # nothing learnt yet: no best to fall from
    (0.29, 0.49, 0.60, True),    # at the thresholds: below 0.5 x best, gap 0.2
])
def test_collapse_rule(pgd, fgsm, best, expected):
    assert collapsed(pgd, fgsm, best, drop=0.5, gap=0.2) is expected


class _Module:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 3)
        self.device = torch.device("cpu")
        self.logged: list[dict] = []

    def log_dict(self, values, **kw) -> None:
        self.logged.append(values)


def _run(guard, module, accuracies, every):
    """Checks at steps every, 2 every, ...; the weights change between checks (as training does)."""
    trainer = SimpleNamespace(global_step=0, should_stop=False, datamodule=None)
    guard._batch = (torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    seq = iter(accuracies)
    guard.accuracies = lambda model, x, y: next(seq)
    snapshots = []
    for i, _ in enumerate(accuracies):
        with torch.no_grad():
            module.model.weight.add_(1.0)
        snapshots.append(copy.deepcopy(module.model.state_dict()))
        trainer.global_step = (i + 1) * every
        guard.on_train_batch_end(trainer, module, None, None, 0)
        if trainer.should_stop:
            break
    return trainer, snapshots


def test_guard_restores_the_last_good_weights_and_stops():
    guard, module = CatastrophicOverfittingGuard(every_n_steps=5, action="restore"), _Module()
    with pytest.warns(CatastrophicOverfittingWarning, match="at step 15: PGD accuracy 0.050"):
        trainer, snaps = _run(guard, module, [(0.3, 0.5), (0.6, 0.7), (0.05, 0.9), (0.6, 0.7)], every=5)
    assert trainer.should_stop and guard.fired_at == 15 and guard.best_pgd_acc == 0.6
    for k, v in module.model.state_dict().items():  # the weights of the check at step 10
        assert torch.equal(v, snaps[1][k]), k
    assert len(module.logged) == 3


def test_guard_in_warn_mode_only_warns():
    guard, module = CatastrophicOverfittingGuard(every_n_steps=5, action="warn"), _Module()
    with pytest.warns(CatastrophicOverfittingWarning):
        trainer, snaps = _run(guard, module, [(0.6, 0.7), (0.05, 0.9)], every=5)
    assert not trainer.should_stop
    assert torch.equal(module.model.weight, snaps[-1]["weight"])


def test_guard_leaves_the_training_rng_alone():
    guard = CatastrophicOverfittingGuard(n=4, pgd_steps=2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    guard.accuracies(model, x, y)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kw, message", [
    (dict(action="stop"), "action must be 'warn' or 'restore'"),
    (dict(every_n_steps=0), "every_n_steps must be an integer >= 1"),
    (dict(drop=1.5), "drop must lie in"),
])
def test_guard_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        CatastrophicOverfittingGuard(**kw)
