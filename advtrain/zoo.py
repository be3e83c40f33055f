"""The transfer model zoo for the embedded MNIST: one command trains every member.

    python -m advtrain.zoo --out runs/zoo          # c4_s0..2, lenet (if registered), mlp, resnet, c4_pgd
    python -m advtrain.zoo --out runs/zoo --only mlp c4_s0

Each member is written as ``<out>/<name>/last.ckpt`` in train.py's checkpoint layout (so
``evaluate.py --ckpt`` and ``evaluate.py --transfer --zoo`` load it) and listed in ``<out>/zoo.json``
with its test accuracy. A member whose checkpoint exists with the same recipe is skipped.
The ResNet is timm's ``resnet10t`` on the gray image: ``Normalize``'s per-channel RGB statistics
broadcast the one channel to three (a 1 -> 3 channel repeat).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from .cli import run_with_clean_errors
from .data import build_datamodule
from .evaluation.guards import check_output_dir
from .io.files import atomic_write
from .models.factory import BUILTIN
from .training.plain_loop import Recipe, train_plain


ZOO: dict[str, Recipe] = {
    "c4_s0": Recipe("c4", seed=0),
    "c4_s1": Recipe("c4", seed=1),
    "c4_s2": Recipe("c4", seed=2),
    "lenet": Recipe("lenet", epochs=6),
    "mlp": Recipe("mlp", epochs=10),
    "resnet": Recipe("timm:resnet10t", epochs=2),
    "c4_pgd": Recipe("c4", seed=3, epochs=4, attack="pgd_linf", attack_options={"eps": 0.2, "steps": 3},
                     adv_weight=0.5),
}


def train_member(recipe: Recipe, limit: int | None = None, progress: bool = True) -> tuple[torch.nn.Module, float]:
    """Train one member with the plain loop (``training/plain_loop.py``); returns (model in eval
    mode, accuracy on the embedded MNIST test split, its first ``limit`` images when given)."""
    from torch.utils.data import DataLoader, Subset

    model = train_plain(recipe, limit=limit, progress=progress)
    dm = build_datamodule(recipe.dataset, batch_size=500, seed=0)
    dm.setup()
    test = dm.test_set if limit is None else Subset(dm.test_set, range(min(limit, len(dm.test_set))))
    right = total = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=500):
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return model, right / max(total, 1)


def save_member(model: torch.nn.Module, recipe: Recipe, accuracy: float, path: Path) -> None:
    """train.py's checkpoint layout: ``model.``-prefixed state dict and the hyper-parameters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hp = {"model": recipe.model, "num_classes": 10, "recipe": asdict(recipe), "test_accuracy": accuracy}
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp,
            "datamodule_hyper_parameters": {"dataset": "mnist_embedded"}}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def train_zoo(out: str | Path, members: dict[str, Recipe] | None = None, limit: int | None = None,
              progress: bool = True) -> dict[str, dict]:
    """Train the members missing from ``out`` (or trained with another recipe); returns the manifest."""
    out = Path(out)
    members = dict(ZOO if members is None else members)
    manifest_path = out / "zoo.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    from tqdm.auto import tqdm
    bar = tqdm(members.items(), desc="zoo", unit="model", disable=not progress)
    for name, recipe in bar:
        bar.set_description(f"zoo: {name}")
        if recipe.model not in BUILTIN and ":" not in recipe.model:
            print(f"[zoo] {name}: model {recipe.model!r} is not registered in this version: skipped")
            continue
        ckpt = out / name / "last.ckpt"
        key = {**asdict(recipe), "limit": limit}
        if ckpt.is_file() and manifest.get(name, {}).get("key") == key:
            print(f"[zoo] {name}: already trained, skipped")
            continue
        model, acc = train_member(recipe, limit, progress)
        save_member(model, recipe, acc, ckpt)
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}  # another run's too
        manifest[name] = {"key": key, "checkpoint": str(ckpt), "test_accuracy": acc}
        manifest_path.write_text(json.dumps(manifest, indent=1))
        print(f"[zoo] {name}: test accuracy {acc:.4f} -> {ckpt}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m advtrain.zoo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/zoo")
    p.add_argument("--only", nargs="+", default=None, help=f"members to train (of {', '.join(ZOO)})")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    bad = [m for m in args.only or [] if m not in ZOO]
    if bad:
        raise ValueError(f"unknown zoo member {', '.join(bad)}; known: {', '.join(ZOO)}")
    check_output_dir(args.out)  # a file or a read-only folder: refused now, not after the training
    train_zoo(args.out, {k: ZOO[k] for k in args.only} if args.only else None, progress=not args.no_progress)


if __name__ == "__main__":
    run_with_clean_errors(main, "python -m advtrain.zoo")
