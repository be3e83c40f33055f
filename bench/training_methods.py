#!/usr/bin/env python
"""Adversarial training methods side by side on the embedded MNIST with C4 (issue 22): clean accuracy,
robust accuracy under APGD-CE at Linf 0.3 and at L2 2.0, time per epoch, for the trained and for the EMA
weights of each run (Lightning's EMAWeightAveraging through advtrain.callbacks.weight_averaging.EMA).

Every method trains the same epochs of the same batches (equal epochs), Adam lr 1e-3, batch 64, Linf
budget 0.3; iterative inner attacks take ``--k`` steps. Results go to bench/training_methods_results.md.

    python bench/training_methods.py                       # 2 epochs of 100 batches, k = 5, 200 test images
    python bench/training_methods.py --epochs 3 --batches 300 --k 10 --n 500
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from advtrain.attacks import build_attack  # noqa: E402
from advtrain.callbacks.weight_averaging import EMA  # noqa: E402
from advtrain.data import NamedDataModule  # noqa: E402
from advtrain.training import AdversarialTrainingModule  # noqa: E402

EPS = 0.3


def methods(k: int) -> dict[str, dict]:
    pgd = {"attack": "pgd_linf", "attack_options": {"eps": EPS, "steps": k}}
    return {
        "clean": {"attack": None},
        "PGD-AT": {**pgd, "adv_weight": 1.0},
        "TRADES": {**pgd, "loss": "trades", "loss_options": {"beta": 6.0}},
        "MART": {**pgd, "loss": "mart", "loss_options": {"beta": 6.0}},
        "PGD+AWP": {**pgd, "adv_weight": 1.0, "awp_gamma": 5e-3},
        "FGSM-RS": {"attack": "pgd_linf", "adv_weight": 1.0,
                    "attack_options": {"eps": EPS, "steps": 1, "alpha": 1.25 * EPS, "random_start": True}},
        "N-FGSM": {"attack": "nfgsm", "attack_options": {"eps": EPS}, "adv_weight": 1.0},
        "GradAlign": {"attack": "fgsm", "attack_options": {"eps": EPS}, "loss": "gradalign",
                      "loss_options": {"lam": 0.2}},
    }


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self.start)


def robust_accuracy(model, x, y, attack) -> float:
    clean = model(x).argmax(1) == y
    return float((clean & ~attack(model, x, y).success).float().mean())


def evaluate(model: torch.nn.Module, x, y, steps: int) -> dict[str, float]:
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    return {"clean": clean,
            "linf": robust_accuracy(model, x, y, build_attack("apgd_linf", eps=EPS, steps=steps)),
            "l2": robust_accuracy(model, x, y, build_attack("apgd_l2", eps=2.0, steps=steps))}


def run(name: str, kw: dict, args) -> dict:
    pl.seed_everything(0, verbose=False)
    module = AdversarialTrainingModule(**kw, val_attack=None, val_pgd=None)
    timer, ema = EpochTimer(), EMA(decay=args.decay)
    trainer = pl.Trainer(max_epochs=args.epochs, limit_train_batches=args.batches, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer, ema], accelerator="cpu", deterministic=True)
    trainer.fit(module, NamedDataModule("mnist_embedded", batch_size=64))
    dm = NamedDataModule("mnist_embedded", batch_size=args.n, eval_batch_size=args.n)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    averaged = evaluate(module.model, x, y, args.apgd_steps)  # EMA copied its average into the model at train end
    module.load_state_dict(ema._trained_state)
    trained = evaluate(module.model, x, y, args.apgd_steps)
    print(name, trained, averaged, [round(t, 1) for t in timer.times], flush=True)
    return {"trained": trained, "ema": averaged, "epoch_s": min(timer.times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=100, help="batches of 64 per epoch")
    ap.add_argument("--k", type=int, default=5, help="steps of the iterative inner attacks")
    ap.add_argument("--n", type=int, default=200, help="test images evaluated")
    ap.add_argument("--apgd-steps", type=int, default=50)
    ap.add_argument("--decay", type=float, default=0.99, help="EMA decay (window ~ 1 / (1 - decay) steps)")
    ap.add_argument("--only", nargs="*", default=None, help="method names to run")
    ap.add_argument("--out", default=str(Path(__file__).with_name("training_methods_results.md")))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = {n: run(n, kw, args) for n, kw in methods(args.k).items() if not args.only or n in args.only}
    clean_s = rows["clean"]["epoch_s"] if "clean" in rows else float("nan")
    lines = [f"# Adversarial training methods, embedded MNIST, C4 ({args.epochs} epochs of {args.batches} batches of 64, "
             f"equal epochs)", "",
             f"`python bench/training_methods.py --epochs {args.epochs} --batches {args.batches} --k {args.k} --n {args.n} "
             f"--apgd-steps {args.apgd_steps} --decay {args.decay}`; {platform.processor() or platform.machine()}, "
             f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the end.", "",
             f"Robust accuracy: APGD-CE ({args.apgd_steps} steps, 1 restart) on the first {args.n} test images, Linf 0.3 "
             f"and L2 2.0. Iterative inner attacks: PGD-Linf {args.k} steps, eps 0.3. EMA: decay {args.decay}, "
             "every step.", "",
             "| method | clean | Linf 0.3 | L2 2.0 | EMA clean | EMA Linf 0.3 | EMA L2 2.0 | s / epoch | x clean epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        t, e = r["trained"], r["ema"]
        lines.append(f"| {name} | {t['clean']:.3f} | {t['linf']:.3f} | {t['l2']:.3f} | {e['clean']:.3f} | "
                     f"{e['linf']:.3f} | {e['l2']:.3f} | {r['epoch_s']:.1f} | {r['epoch_s'] / clean_s:.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
