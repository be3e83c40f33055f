"""A plain (Lightning-free) training loop and a weights cache keyed by the recipe.

For tests and benches that need a trained model once: the clean C4 of the test suite and the Madry
adversarially trained nets (Madry et al. 2017: adversarial-only loss on PGD examples). ``train.py``
with ``configs/mnist_embedded_madry_linf.yaml`` runs the same recipe through Lightning.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import build_datamodule
from ..io.files import atomic_write
from ..models import build_model
from .inner_attack import adversarial_loss, build_inner_attack


@dataclass(frozen=True)
class Recipe:
    """What determines the trained weights (the cache key). ``attack=None``: clean training;
    otherwise the inner attack's registry name and options, and ``adv_weight`` (1.0: Madry)."""

    model: str = "c4"
    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    attack: str | None = None
    attack_options: dict[str, Any] = field(default_factory=dict)
    adv_weight: float = 1.0
    clean_epochs: int = 0
    dataset: str = "mnist_embedded"

    def key(self) -> str:
        opts = "-".join(f"{k}{v}" for k, v in sorted(self.attack_options.items()))
        adv = f"-{self.attack}-{opts}-w{self.adv_weight}" if self.attack else ""
        adv += f"-clean{self.clean_epochs}" if self.attack and self.clean_epochs else ""
        return f"{self.model}-{self.dataset}-adam{self.lr}-bs{self.batch_size}-ep{self.epochs}-seed{self.seed}{adv}"


def train_plain(recipe: Recipe, log: bool = False,
                on_epoch_end: Callable[[int, nn.Module], None] | None = None,
                limit: int | None = None, progress: bool = False) -> nn.Module:
    """Adam on ``recipe.dataset``'s train split; with an attack, after ``clean_epochs`` clean epochs,
    every batch is replaced by (or mixed with, ``adv_weight < 1``) its adversarial examples crafted on
    the current model (eval mode).

    ``on_epoch_end(epochs_done, model)`` runs after each epoch (the model after k epochs is the
    model of the same recipe with ``epochs=k``: snapshots). ``limit``: train on the first ``limit``
    training images only (tiny models for tests); ``progress``: a progress bar over the epochs."""
    from tqdm.auto import tqdm

    torch.manual_seed(recipe.seed)
    dm = build_datamodule(recipe.dataset, batch_size=recipe.batch_size, seed=0)
    dm.setup()
    model = build_model(recipe.model, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    attack = build_inner_attack(recipe.attack, recipe.attack_options) if recipe.attack else None
    if limit is None:
        loader = dm.train_dataloader()
    else:
        loader = DataLoader(Subset(dm.train_set, range(min(limit, len(dm.train_set)))), batch_size=recipe.batch_size,
                            shuffle=True, generator=torch.Generator().manual_seed(recipe.seed))
    for epoch in tqdm(range(recipe.epochs), desc=recipe.model, leave=False, disable=not progress):
        t0, seen, right = time.perf_counter(), 0, 0
        model.train()
        for x, y in loader:
            if attack is None or epoch < recipe.clean_epochs:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            else:
                x_adv = attack(model, x, y).x_adv.detach()
                loss, logits = adversarial_loss(model, x, x_adv, y, recipe.adv_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen, right = seen + y.numel(), right + (logits.argmax(1) == y).sum().item()
        if log:
            print(f"epoch {epoch + 1}/{recipe.epochs}: train acc {right / seen:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
            model.train()
    return model.eval()


def cached_model(recipe: Recipe, cache_dir: str | Path, log: bool = False) -> nn.Module:
    """The model of ``recipe`` from ``cache_dir/<recipe.key()>.pt``, trained and saved when missing
    (a JSON file beside it records the recipe and the training time)."""
    path = Path(cache_dir) / f"{recipe.key()}.pt"
    model = build_model(recipe.model, num_classes=10)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    t0 = time.perf_counter()
    model = train_plain(recipe, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    info = {**asdict(recipe), "train_seconds": round(time.perf_counter() - t0, 1),
            "threads": torch.get_num_threads()}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return model


#: Madry et al. 2017's Linf PGD training (eps 0.3, step 0.01, 40 steps, random start, adversarial-only
#: loss); ``configs/mnist_embedded_madry_linf.yaml`` is the same recipe for train.py.
MADRY_PGD = {"eps": 0.3, "steps": 40, "alpha": 0.01, "random_start": True}


def madry_recipe(model: str = "c4", epochs: int = 12, lr: float = 1e-3, **pgd: Any) -> Recipe:
    """Madry's recipe for ``model`` (``pgd`` overrides the inner PGD's options: cheaper versions).

    Measured (bench/train_madry.py, 1 thread): C4, 12 epochs at lr 1e-3: Linf PGD-40 accuracy 0.642,
    clean 0.972 on 500 test images, ~130 s an epoch (26 min). Madry's LeNet collapses to a constant
    classifier at lr 1e-3 (clean 0.096 after one epoch); at Madry's lr 1e-4 it reaches only 0.422
    (clean 0.920) after 12 epochs (~170 s an epoch): it needs more epochs than 4,000 digits x 12."""
    return Recipe(model=model, epochs=epochs, lr=lr, attack="pgd_linf", attack_options={**MADRY_PGD, **pgd},
                  adv_weight=1.0)
