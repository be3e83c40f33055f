"""The gradient count of every registered attack on a small fixed problem (``tests/test_grad_counts.py``).

``record()`` runs each attack on 8 images of the embedded MNIST test split against a seeded,
untrained C4 whose own predictions are the labels (every sample starts correct; attacks succeed
early, so the per-sample early-stopping paths run), plainly and through EOT (2 draws), and returns
``{attack: {"grads": ..., "queries": ...}}``. ``tests/anchors/grad_counts.json`` holds what the
attacks reported when they counted by hand (before ``AttackContext`` measured the count).
"""
from __future__ import annotations

import inspect
import warnings

import torch

from advtrain.attacks import ATTACKS, build_attack
from advtrain.data import build_datamodule
from advtrain.defenses.eot import EOT
from advtrain.models import build_model

#: few steps: the count's structure (per step, per candidate, per restart), not the attack's strength
OPTIONS = {"steps": 3}
NO_STEPS = {"fgsm", "square_l2", "square_linf"}
EXTRA = {"fab_l2": {"restarts": 2}, "fab_linf": {"restarts": 2}, "apgd_l2": {"restarts": 2},
         "square_l2": {"queries": 5}, "square_linf": {"queries": 5}, "cw_l2": {"search_steps": 2},
         "scw_l2": {"steps": 3, "search_steps": 2}, "fia": {"ens": 2}, "naa": {"ens": 2}}
#: what one EOT run needs (the attacks that take a loss gradient of the model's draws and the others)
EOT_ATTACKS = ["pgd_l2", "deepfool", "fab_l2", "cw_l2", "ddn", "mifgsm", "apgd_t_l2", "square_l2"]


def problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("c4", num_classes=10).eval()
    dm = build_datamodule("mnist_embedded", batch_size=8, seed=0)
    dm.setup()
    x = next(iter(dm.test_dataloader()))[0][:8]
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def options(name: str, files: dict[str, str]) -> dict:
    opts = {} if name in NO_STEPS else dict(OPTIONS)
    cls = ATTACKS[name]
    if "eps" in inspect.signature(cls.__init__).parameters:
        opts["eps"] = 0.1 if cls.norm == "linf" else 1.5
    opts.update(EXTRA.get(name, {}))
    if name == "fsa":
        opts.update(files)
    return opts


def record(files: dict[str, str]) -> dict[str, dict[str, int]]:
    model, x, y = problem()
    out = {}
    for view, names in (("plain", sorted(ATTACKS)), ("eot2", EOT_ATTACKS)):
        net = model if view == "plain" else EOT(model, 2)
        for name in names:
            torch.manual_seed(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = build_attack(name, **options(name, files))(net, x, y)
            out[f"{view}:{name}"] = {"grads": int(res.grads), "queries": int(res.queries)}
    return out
