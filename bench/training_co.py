#!/usr/bin/env python
"""Catastrophic overfitting (CO) of plain FGSM training (zero init, step eps; Goodfellow's attack, adversarial-
only loss) on the embedded MNIST with C4, and the guard that catches it (advtrain.callbacks.overfitting_guard).

For each eps: train with the guard in ``warn`` mode (so the run goes on and the whole curve is seen), print
the PGD-10 and FGSM accuracy of the guard's fixed 128 validation images at every check, and where the guard
would have fired. Results: bench/training_co_results.md.

    python bench/training_co.py --eps 0.3 0.4 0.5 --epochs 3 --every 10
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import lightning.pytorch as pl  # noqa: E402

from advtrain.callbacks.overfitting_guard import CatastrophicOverfittingGuard  # noqa: E402
from advtrain.data import NamedDataModule  # noqa: E402
from advtrain.training import AdversarialTrainingModule  # noqa: E402


def curve(eps: float, epochs: int, every: int, adv_weight: float = 1.0):
    pl.seed_everything(0, verbose=False)
    module = AdversarialTrainingModule(attack="fgsm", attack_options={"eps": eps}, adv_weight=adv_weight,
                                       val_attack=None, val_pgd=None)
    guard = CatastrophicOverfittingGuard(eps=eps, every_n_steps=every, n=128, action="warn")
    trainer = pl.Trainer(max_epochs=epochs, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[guard],
                         accelerator="cpu", deterministic=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, NamedDataModule("mnist_embedded", batch_size=64))
    fired = [str(w.message) for w in caught if w.category.__name__ == "CatastrophicOverfittingWarning"]
    return guard.history, fired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--adv-weight", type=float, default=1.0, help="1.0: adversarial-only, 0.5: Goodfellow's mix")
    ap.add_argument("--out", default=str(Path(__file__).with_name("training_co_results.md")))
    args = ap.parse_args()
    lines = [f"# Catastrophic overfitting of plain FGSM training (embedded MNIST, C4, Adam 1e-3, batch 64, "
             f"{args.epochs} epochs of 63 steps)", "",
             f"`python bench/training_co.py --eps {' '.join(map(str, args.eps))} --epochs {args.epochs} "
             f"--every {args.every} --adv-weight {args.adv_weight}`: PGD-10 / FGSM accuracy on the guard's 128 fixed validation images at the "
             "training eps, every check.", ""]
    for eps in args.eps:
        history, fired = curve(eps, args.epochs, args.every, args.adv_weight)
        print(eps, history, fired[:1], flush=True)
        lines += [f"## eps {eps}, adv_weight {args.adv_weight}", "", "| step | PGD-10 acc | FGSM acc |", "| --- | --- | --- |"]
        lines += [f"| {s} | {p:.3f} | {f:.3f} |" for s, p, f in history]
        lines += ["", f"guard (drop 0.5, gap 0.2): {fired[0] if fired else 'never fired'}", ""]
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
