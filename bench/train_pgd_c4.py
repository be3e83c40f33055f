"""A quick PGD-trained C4 for bench/featspace.py (plain loop, the tests' C4 recipe + Madry PGD):
PGD-Linf eps 0.3, 10 steps (alpha 0.075 = 2.5 eps / steps), random start, adversarial-only loss,
Adam 1e-3, batch 64, 10 epochs on the 4,000 embedded-MNIST training digits.

    OMP_NUM_THREADS=1 python bench/train_pgd_c4.py --out .cache/bench/c4_pgd_linf03.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from advtrain.attacks import build_attack
from advtrain.data import build_datamodule
from advtrain.models import build_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".cache/bench/c4_pgd_linf03.pt")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.3)
    args = p.parse_args()
    torch.manual_seed(0)
    dm = build_datamodule("mnist_embedded", batch_size=64, seed=0)
    dm.setup()
    model = build_model("c4", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    attack = build_attack("pgd_linf", eps=args.eps, steps=10)
    for epoch in range(args.epochs):
        for x, y in dm.train_dataloader():
            model.train()
            x_adv = attack(model, x, y).x_adv
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_adv), y).backward()
            opt.step()
        model.eval()
        x, y = next(iter(dm.test_dataloader()))
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        print(f"epoch {epoch}: clean test acc (first batch) {acc:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
