#!/usr/bin/env python
"""Cost of adversarial training relative to its floor: time of one adversarial-training epoch divided
by (k + 1) times a clean epoch, for FGSM (k = 1), PGD-k, DDN-k and BP-k (k = 20 by default).

An inner-loop attack of k gradient computations plus the training step cannot cost less than about
k + 1 clean steps, so the ratio measures the overhead of the implementation (target <= 1.15 on CPU).
Each epoch runs through Lightning (the real training path) on the embedded MNIST with C4; the time
is taken between the start and the end of the training epoch (no validation, no checkpoint).

    python bench/training.py            # k = 20, 20 batches of 64 per epoch
    python bench/training.py --quick    # k = 5, 5 batches per epoch
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from advtrain.data import NamedDataModule  # noqa: E402
from advtrain.training import AdversarialTrainingModule  # noqa: E402


class EpochTimer(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def epoch_seconds(attack: str | None, options: dict, adv_weight: float, batches: int, repeats: int) -> float:
    """Best of ``repeats`` epochs of ``batches`` batches (the least disturbed by other processes)."""
    pl.seed_everything(0, verbose=False)
    module = AdversarialTrainingModule(attack=attack, attack_options=options, adv_weight=adv_weight,
                                       val_attack=None, val_pgd=None)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=repeats, limit_train_batches=batches, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], accelerator="cpu")
    times = []
    timer.on_train_epoch_end = lambda t, m: times.append(time.perf_counter() - timer.start)  # type: ignore
    trainer.fit(module, NamedDataModule("mnist_embedded", batch_size=64))
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="k = 5, 5 batches, 1 repeat (a smoke run)")
    ap.add_argument("--k", type=int, default=None, help="iterations of PGD/DDN/BP (default 20, 5 with --quick)")
    ap.add_argument("--batches", type=int, default=None, help="batches of 64 per epoch (default 20)")
    ap.add_argument("--repeats", type=int, default=None, help="epochs per setting, best kept (default 2)")
    ap.add_argument("--adv-weight", type=float, default=1.0,
                    help="mix ratio (1.0: Madry, adversarial images only; 0.5: Goodfellow, twice the batch)")
    args = ap.parse_args()
    k = args.k or (5 if args.quick else 20)
    batches = args.batches or (5 if args.quick else 20)
    repeats = args.repeats or (1 if args.quick else 2)
    settings = [("fgsm", "fgsm", {"eps": 0.3}, 1), (f"pgd-{k}", "pgd_l2", {"steps": k}, k),
                (f"ddn-{k}", "ddn", {"steps": k}, k), (f"bp-{k}", "bp", {"steps": k}, k)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {batches} batches of 64 per epoch, "
          f"best of {repeats}, adv_weight {args.adv_weight} (CPU timings are noisy on a shared machine)")
    clean = epoch_seconds(None, {}, args.adv_weight, batches, repeats)
    print(f"{'clean':>8}: {clean:7.2f} s/epoch")
    for label, name, options, grads in settings:
        t = epoch_seconds(name, options, args.adv_weight, batches, repeats)
        print(f"{label:>8}: {t:7.2f} s/epoch   ratio t / ((k+1) t_clean) = {t / ((grads + 1) * clean):.3f}"
              f"   (k = {grads})")


if __name__ == "__main__":
    main()
