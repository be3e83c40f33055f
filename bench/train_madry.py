"""Train Madry's Linf PGD recipe (``advtrain.training.plain_loop.madry_recipe``) with a snapshot and
the Linf PGD-40 (eps 0.3, step 0.01, random start) test accuracy after every epoch.

Each snapshot is cached in ``.cache/models`` under the key of the same recipe with ``epochs=k``, so
``bench/evaluation_strength.py --model M --epochs k`` evaluates it without training again.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_madry.py --model c4 --epochs 12
    OMP_NUM_THREADS=1 .venv/bin/python bench/train_madry.py --model lenet --epochs 12 --lr 1e-4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from advtrain.attacks import build_attack  # noqa: E402
from advtrain.data import build_datamodule  # noqa: E402
from advtrain.training.plain_loop import madry_recipe, train_plain  # noqa: E402

CACHE = ROOT / ".cache" / "models"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="c4")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clean-epochs", type=int, default=0)
    p.add_argument("--n-eval", type=int, default=500, help="test images for the per-epoch PGD-40 accuracy")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = replace(madry_recipe(args.model, args.epochs), lr=args.lr, clean_epochs=args.clean_epochs)
    dm = build_datamodule(recipe.dataset, batch_size=250, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(args.n_eval)])
    x, y = torch.stack(xs), torch.tensor(ys)
    pgd = build_attack("pgd_linf", eps=0.3, steps=40, alpha=0.01, random_start=True)
    t0 = time.perf_counter()

    def snapshot(k: int, model: torch.nn.Module) -> None:
        model.eval()
        seconds = time.perf_counter() - t0
        r = replace(recipe, epochs=k)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), CACHE / f"{r.key()}.pt")
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        torch.manual_seed(0)
        robust = (~pgd(model, x, y).success).float().mean().item()
        info = {**asdict(r), "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                "clean_acc": clean, "pgd40_acc": robust, "n_eval": args.n_eval}
        (CACHE / f"{r.key()}.json").write_text(json.dumps(info, indent=1))
        print(f"epoch {k}: {seconds / 60:.1f} min, clean {clean:.3f}, Linf PGD-40 (0.3) {robust:.3f} "
              f"on {args.n_eval} test images", flush=True)

    train_plain(recipe, log=True, on_epoch_end=snapshot)


if __name__ == "__main__":
    main()
