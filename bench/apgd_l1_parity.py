"""l1-APGD against the original AutoAttack's (``pyautoattack``'s ``APGDAttack`` / ``APGDAttack_targeted``
with ``norm='L1'`` and ``use_largereps``, as its standard L1 version runs them), same images, same run,
image by image (issue 20, the L1 threat model).

On the first ``--n`` images a model trained elsewhere classifies correctly (advertorch's Madry LeNet5 on
mnist_embedded's test digits, or AutoAttack's naturally trained CIFAR-10 ResNet-18 on foolbox's 20
samples), per attack (APGD-CE-L1 with ``--restarts``, APGD-T-L1 on ``--targets`` classes; both 100 steps,
seed 0) prints: success rate of ours and theirs, the images both / only ours / only theirs broke, the
one-sided sign-test p-value of "theirs only" against "ours only" (``evaluation.metrics.sign_test_p``: under equal strength
each discordant image is a fair coin), the largest L1 distortion (<= eps) and the wall time of each.
``--out`` writes the per-image results as JSON.

    OMP_NUM_THREADS=1 .venv/bin/python bench/apgd_l1_parity.py --model lenet5 --n 200 --eps 10
    OMP_NUM_THREADS=1 .venv/bin/python bench/apgd_l1_parity.py --model resnet18 --n 20 --eps 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from advtrain.attacks import build_attack  # noqa: E402
from advtrain.evaluation.metrics import sign_test_p  # noqa: E402
from advtrain.ops.norms import l1_norm, within_budget  # noqa: E402
from autoattack_anchors import images  # noqa: E402


def broken(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, eps: float) -> Tensor:
    """Misclassified and inside the L1 ball."""
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y) & within_budget(l1_norm(x_adv - x), eps)


def theirs(model: nn.Module, x: Tensor, y: Tensor, eps: float, targeted: bool, restarts: int, targets: int) -> Tensor:
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    if targeted:
        a = APGDAttack_targeted(model, norm="L1", eps=eps, n_iter=100, n_restarts=1, seed=0, device=x.device)
        a.n_target_classes = targets
    else:
        a = APGDAttack(model, norm="L1", eps=eps, n_iter=100, n_restarts=restarts, seed=0, loss="ce", device=x.device)
    a.use_largereps = True  # AutoAttack standard's L1 setting
    return a.perturb(x, y)


def ours(model: nn.Module, x: Tensor, y: Tensor, eps: float, targeted: bool, restarts: int, targets: int) -> Tensor:
    if targeted:
        return build_attack("apgd_t_l1", eps=eps, n_target_classes=targets)(model, x, y).x_adv
    return build_attack("apgd_l1", eps=eps, restarts=restarts)(model, x, y).x_adv


def compare(model: nn.Module, x: Tensor, y: Tensor, eps: float, targeted: bool, restarts: int = 1,
            targets: int = 5) -> dict:
    """Both attacks on (x, y): per image broken, the counts, the sign test, max L1 and the times."""
    out = {}
    for who, fn in (("ours", ours), ("theirs", theirs)):
        t0 = time.perf_counter()
        x_adv = fn(model, x, y, eps, targeted, restarts, targets).detach()
        out[f"time_{who}_s"] = round(time.perf_counter() - t0, 2)
        out[f"broken_{who}"] = broken(model, x, y, x_adv, eps).tolist()
        out[f"max_l1_{who}"] = round(float(l1_norm(x_adv - x).max()), 5)
    a, b = torch.tensor(out["broken_ours"]), torch.tensor(out["broken_theirs"])
    out.update(n=len(y), both=int((a & b).sum()), ours_only=int((a & ~b).sum()), theirs_only=int((~a & b).sum()))
    out["p_theirs_stronger"] = sign_test_p(out["theirs_only"], out["ours_only"])
    return out


def correct_first(model: nn.Module, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep][:n], y[keep][:n]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["lenet5", "resnet18"], default="lenet5")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, default=10.0)
    p.add_argument("--restarts", type=int, default=5, help="APGD-CE-L1's (AutoAttack standard: 5)")
    p.add_argument("--targets", type=int, default=5, help="APGD-T-L1's target classes (AutoAttack standard: 5)")
    p.add_argument("--only", choices=["ce", "t"], default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, x, y, what = images(args.model, 2 * args.n, 20)
    x, y = correct_first(model, x, y, args.n)
    results = {"model": args.model, "images": f"the first {len(y)} correctly classified of {what}", "eps": args.eps}
    for key, targeted in (("apgd_ce_l1", False), ("apgd_t_l1", True)):
        if args.only is not None and (args.only == "t") != targeted:
            continue
        r = compare(model, x, y, args.eps, targeted, args.restarts, args.targets)
        results[key] = r
        print(f"{key}: n={r['n']} success ours {sum(r['broken_ours']) / r['n']:.3f} theirs "
              f"{sum(r['broken_theirs']) / r['n']:.3f}; both {r['both']}, ours only {r['ours_only']}, theirs only "
              f"{r['theirs_only']} (p {r['p_theirs_stronger']:.3f}); max L1 {r['max_l1_ours']} / {r['max_l1_theirs']}; "
              f"time ours {r['time_ours_s']} s, theirs {r['time_theirs_s']} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
