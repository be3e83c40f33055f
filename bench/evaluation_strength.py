"""How strong is the evaluation? The ``reliable`` suite against the peers' strongest settings on a
Madry (Linf PGD) adversarially trained MNIST model (issue 11).

Prints, per attack, P_suc, D-bar, P(D <= 2) and time, quantized (8-bit, rounded after the peers'
attacks, as the protocol does) and not: our ``reliable`` suite's attacks and its per-image worst
case; the peers (adv_lib FMN / ALMA / DDN at 1000 iterations, foolbox DDN-1000, torchattacks'
AutoAttack at Linf 0.3 and L2 2.0) and their combined per-image worst case; then the pointwise gap
between the two worst-case curves P(D) (peers minus ours: > 0 where the peers find more
adversarials within D than our suite, i.e. where the suite overstates robustness).

Attacks of the suite not registered in this checkout are skipped with a message. The model is
trained once (``advtrain.training.plain_loop``: Madry's recipe, see
``configs/mnist_embedded_madry_linf.yaml``) and cached in ``.cache/models``.

    .venv/bin/python bench/evaluation_strength.py --n 200 [--model lenet --lr 1e-4] [--epochs 12] [--no-peers]
    .venv/bin/python bench/evaluation_strength.py --n 64 --suite thesis      # the thesis settings instead
"""
from __future__ import annotations

import argparse
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from advtrain.attacks import ATTACKS, build_attack  # noqa: E402
from advtrain.ops.norms import l2_norm, quantize  # noqa: E402
from advtrain.data import build_datamodule  # noqa: E402
from advtrain.evaluation import run_suite  # noqa: E402
from advtrain.evaluation.metrics import least_distortion, operating_characteristic, summarize  # noqa: E402
from advtrain.evaluation.suite import _reliable_entries, load_suite  # noqa: E402
from advtrain.training.plain_loop import cached_model, madry_recipe  # noqa: E402

CACHE = ROOT / ".cache" / "models"
D_UPP = 2.0
VARIANTS = ("quantized", "unquantized")
GAP_AT = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def peer_attacks(steps: int = 1000) -> dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]]:
    """label -> attack(model, x, y) -> x_adv, for the peers installed (test extras)."""
    peers: dict[str, Callable] = {}
    try:
        sys.modules.setdefault("visdom", types.ModuleType("visdom"))  # adv_lib imports it, never uses it here
        from adv_lib.attacks import alma, ddn, fmn
        peers[f"adv_lib fmn-{steps}"] = lambda m, x, y: fmn(m, x, y, norm=2, steps=steps)
        peers[f"adv_lib alma-{steps}"] = lambda m, x, y: alma(m, x, y, num_steps=steps)
        peers[f"adv_lib ddn-{steps}"] = lambda m, x, y: ddn(m, x, y, steps=steps)
    except ImportError:
        print("adv_lib not installed: its attacks are skipped")
    try:
        import foolbox as fb

        def fb_ddn(m, x, y):
            return fb.attacks.DDNAttack(steps=steps)(fb.PyTorchModel(m, bounds=(0, 1)), x, y, epsilons=None)[1]
        peers[f"foolbox ddn-{steps}"] = fb_ddn
    except ImportError:
        print("foolbox not installed: its DDN is skipped")
    try:
        import torchattacks as ta
        peers["autoattack linf 0.3"] = lambda m, x, y: ta.AutoAttack(m, norm="Linf", eps=0.3, seed=0)(x, y)
        peers["autoattack l2 2.0"] = lambda m, x, y: ta.AutoAttack(m, norm="L2", eps=2.0, seed=0)(x, y)
    except ImportError:
        print("torchattacks not installed: AutoAttack is skipped")
    return peers


def run_peer(attack: Callable, model: nn.Module, x: Tensor, y: Tensor, batch: int) -> tuple[dict, float]:
    """Per variant (success, L2) over the images, and the wall time."""
    t0 = time.perf_counter()
    advs = torch.cat([attack(model, x[i:i + batch], y[i:i + batch]).detach() for i in range(0, len(y), batch)])
    elapsed = time.perf_counter() - t0
    out = {}
    for v in VARIANTS:
        a = quantize(advs) if v == "quantized" else advs
        with torch.no_grad():
            out[v] = (model(a).argmax(1) != y, l2_norm(a - x).double())
    return out, elapsed


def reliable_available(dataset: str) -> list[dict]:
    """The reliable suite's entries whose attacks are registered (the others are announced)."""
    entries = _reliable_entries("mnist")
    missing = [e["label"] for e in entries if e["attack"] not in ATTACKS]
    if missing:
        print(f"not registered in this checkout, skipped: {', '.join(missing)}")
    return [e for e in entries if e["attack"] in ATTACKS]


def madry_model(name: str, epochs: int, pgd: dict | None = None, clean_epochs: int = 0,
                lr: float = 1e-3) -> tuple[nn.Module, str]:
    """The Madry-trained model (cached; trained now when missing) and its cache path."""
    recipe = replace(madry_recipe(name, epochs, **(pgd or {})), clean_epochs=clean_epochs, lr=lr)
    path = CACHE / f"{recipe.key()}.pt"
    if not path.is_file():
        print(f"training {recipe.key()} (cached in {CACHE}) ...", flush=True)
    return cached_model(recipe, CACHE, log=True), str(path)


def row(label: str, success: Tensor, dist: Tensor, seconds: float | None) -> str:
    s = summarize(success, dist, D_UPP)
    t = "-" if seconds is None else f"{seconds:.1f}"
    return f"| {label} | {s['p_suc']:.3f} | {s['d_bar']:.3f} | {s['p_upp']:.3f} | {t} |"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="first N test images (the correct ones are attacked)")
    p.add_argument("--model", default="c4", help="c4 (default) or lenet (Madry's net; with --lr 1e-4)")
    p.add_argument("--epochs", type=int, default=12, help="epochs of Madry's recipe")
    p.add_argument("--pgd-steps", type=int, default=None, help="cheaper recipe: inner PGD steps (default 40)")
    p.add_argument("--pgd-alpha", type=float, default=None, help="cheaper recipe: inner PGD step (default 0.01)")
    p.add_argument("--clean-epochs", type=int, default=0, help="clean epochs before adversarial training")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate of the recipe (LeNet: 1e-4)")
    p.add_argument("--suite", default="reliable", help="reliable (default) or any suite name/file")
    p.add_argument("--peer-steps", type=int, default=1000)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pgd = {k: v for k, v in (("steps", args.pgd_steps), ("alpha", args.pgd_alpha)) if v is not None}
    model, where = madry_model(args.model, args.epochs, pgd, args.clean_epochs, args.lr)
    dm = build_datamodule("mnist_embedded", batch_size=args.batch, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(args.n)])
    x_all, y_all = torch.stack(xs), torch.tensor(ys)
    with torch.no_grad():
        correct = model(x_all).argmax(1) == y_all
    pgd = build_attack("pgd_linf", eps=0.3, steps=40, alpha=0.01, random_start=True)(model, x_all, y_all)
    print(f"model: {where}\n  clean accuracy {correct.float().mean():.3f}, Linf PGD-40 (eps 0.3) accuracy "
          f"{(~pgd.success).float().mean():.3f} on the first {args.n} test images; "
          f"{int(correct.sum())} correct images attacked, {torch.get_num_threads()} thread(s)")

    suite = reliable_available("mnist_embedded") if args.suite == "reliable" else args.suite
    loader = DataLoader(TensorDataset(x_all, y_all), batch_size=args.batch)
    res = run_suite(model, loader, suite, n=args.n, batch_size=args.batch, progress=False)
    X = torch.tensor(res["context"]["indices"], dtype=torch.long)
    x, y = x_all[X], y_all[X]
    ours: dict[str, tuple[Tensor, Tensor]] = {}
    peers: dict[str, dict[str, tuple[Tensor, Tensor]]] = {v: {} for v in VARIANTS}
    peer_time: dict[str, float] = {}
    if not args.no_peers:
        for label, attack in peer_attacks(args.peer_steps).items():
            torch.manual_seed(0)
            out, peer_time[label] = run_peer(attack, model, x, y, args.batch)
            for v in VARIANTS:
                peers[v][label] = out[v]
            print(f"  {label}: {peer_time[label]:.0f} s", flush=True)
    ours_time = sum(e.get("time_s") or 0.0 for e in res["attacks"].values())
    for v in VARIANTS:
        print(f"\n## {v} (N = {len(X)})\n\n| attack | P_suc | D-bar | P(D<=2) | time (s) |\n| --- | ---: | ---: | ---: | ---: |")
        for label, e in res["attacks"].items():
            if e.get("status") != "done":
                print(f"| {label} | crashed: {e.get('error')} ||||")
                continue
            l2 = torch.tensor([float("inf") if d is None else d for d in e[v]["per_sample"]["l2"]], dtype=torch.float64)
            print(row(f"ours {label}", torch.isfinite(l2), l2, e.get("time_s")))
        wc = torch.tensor([float("inf") if d is None else d for d in res["worst_case"][v]["per_sample"]["l2"]],
                          dtype=torch.float64)
        ours[v] = (torch.isfinite(wc), wc)
        print(row(f"**ours: worst case ({args.suite})**", *ours[v], ours_time))
        if not peers[v]:
            continue
        for label, (s, d) in peers[v].items():
            print(row(f"peer {label}", s, d, peer_time[label]))
        ps, pd = least_distortion(torch.stack([s for s, _ in peers[v].values()]),
                                  torch.stack([d for _, d in peers[v].values()]))
        print(row("**peers: worst case**", ps, pd, sum(peer_time.values())))
        found = torch.cat([wc[torch.isfinite(wc)], pd[ps]])
        grid = torch.linspace(0, float(found.max()) if found.numel() else 1.0, 400, dtype=torch.float64)
        gap = operating_characteristic(ps, pd, grid) - operating_characteristic(*ours[v], grid)
        at = operating_characteristic(ps, pd, torch.tensor(GAP_AT, dtype=torch.float64)) - \
            operating_characteristic(*ours[v], torch.tensor(GAP_AT, dtype=torch.float64))
        i = int(gap.argmax())
        print(f"\ngap P_peers(D) - P_ours(D): max {float(gap[i]):+.3f} at D = {float(grid[i]):.2f}; "
              + ", ".join(f"D={d:g}: {float(g):+.3f}" for d, g in zip(GAP_AT, at)))


if __name__ == "__main__":
    main()
