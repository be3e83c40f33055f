"""How strong is the evaluation? The ``reliable`` suite against the peers' strongest settings, per threat
model (issues 11, 20), on a Madry (Linf PGD) adversarially trained MNIST model or a model trained
elsewhere (advertorch's Madry LeNet5, AutoAttack's CIFAR-10 ResNet-18 on foolbox's 20 samples).

Prints, per threat model (Linf, L2) and variant (quantized: 8-bit, rounded into the ball after
fixed-budget attacks as the protocol does; unquantized), per attack of that norm the images it ran
on (the cascade), P_suc there, D-bar and P(D <= eps) in that norm and time; the worst case and the
robust accuracy at the budget (RobustBench: over all N' images); the original AutoAttack (standard,
``pyautoattack``) at the same budget beside it, live (``--autoattack run``) or from the anchors of
``bench/autoattack_anchors.py`` (``--autoattack anchors``, when they match the model, images and eps);
the per-image parity (images AutoAttack breaks that the suite does not: must be none); in L2 the
minimum-norm peers (adv_lib FMN / ALMA / DDN at 1000 iterations, foolbox DDN-1000) and the pointwise
gap between the two worst-case curves P(D) (peers minus ours: > 0 where the suite overstates
robustness); last the cost: our suite's time against AutoAttack's, same images and threads.

Attacks of the suite not registered in this checkout are skipped with a message. The Madry C4 /
LeNet are trained once (``advtrain.training.plain_loop``: Madry's recipe) and cached in ``.cache/models``.

    .venv/bin/python bench/evaluation_strength.py --model lenet5 --n 100 --autoattack run      # issue 20
    .venv/bin/python bench/evaluation_strength.py --model resnet18 --threat linf --budget linf=1/255
    .venv/bin/python bench/evaluation_strength.py --n 200 [--model lenet --lr 1e-4] [--epochs 12] [--no-peers]
    .venv/bin/python bench/evaluation_strength.py --n 64 --suite thesis      # the thesis settings instead
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from advtrain.attacks import ATTACKS  # noqa: E402
from advtrain.data import build_datamodule  # noqa: E402
from advtrain.data.specs import dataset_spec  # noqa: E402
from advtrain.evaluation import run_suite  # noqa: E402
from advtrain.evaluation.metrics import least_distortion, operating_characteristic, summarize  # noqa: E402
from advtrain.evaluation.suite import _reliable_entries  # noqa: E402
from advtrain.evaluation.threats import broken_images, parse_threats, standard_budgets  # noqa: E402
from advtrain.ops.norms import NORMS, quantize  # noqa: E402
from advtrain.training.plain_loop import cached_model, madry_recipe  # noqa: E402

CACHE = ROOT / ".cache" / "models"
VARIANTS = ("quantized", "unquantized")
GAP_AT = {"l2": (0.5, 1.0, 1.5, 2.0, 2.5, 3.0), "linf": (0.1, 0.2, 0.3, 0.4)}


def peer_attacks(steps: int = 1000) -> dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]]:
    """label -> attack(model, x, y) -> x_adv: the L2 minimum-norm peers installed (test extras)."""
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
            out[v] = (model(a).argmax(1) != y, NORMS["l2"](a - x).double())
    return out, elapsed


def reliable_available(dataset: str, threats: list[str], budgets: dict[str, float]) -> list[dict]:
    """The reliable suite's entries of ``threats`` whose attacks are registered (the others are announced)."""
    entries = [e for e in _reliable_entries(dataset_spec(dataset).group, budgets)
               if e["attack"] not in ATTACKS or ATTACKS[e["attack"]].norm in threats]
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


def subject(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor, str, str, str]:
    """The model, its first ``--n`` images and labels, the dataset, a description and the anchors' model key."""
    from advtrain.models.peer_weights import (autoattack_resnet18_cifar10, foolbox_cifar10_samples,
                                              madry_lenet5_mnist)
    if args.model == "resnet18":
        x, y = foolbox_cifar10_samples()
        return autoattack_resnet18_cifar10(), x[:args.n], y[:args.n], "cifar10", \
            "AutoAttack's CIFAR-10 ResNet-18 (pyautoattack 0.2.0), foolbox's CIFAR-10 samples", "resnet18"
    dm = build_datamodule("mnist_embedded", batch_size=args.batch, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(args.n)])
    x, y = torch.stack(xs), torch.tensor(ys)
    if args.model == "lenet5":
        return madry_lenet5_mnist(), x, y, "mnist_embedded", "advertorch 0.2.3's Madry LeNet5", "lenet5"
    pgd = {k: v for k, v in (("steps", args.pgd_steps), ("alpha", args.pgd_alpha)) if v is not None}
    model, where = madry_model(args.model, args.epochs, pgd, args.clean_epochs, args.lr)
    return model, x, y, "mnist_embedded", f"Madry {args.model}: {where}", args.model


def autoattack_peer(mode: str, key: str, model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float) -> dict | None:
    """AutoAttack standard's per-image result: live, or the anchor matching model, images and eps."""
    if mode == "none":
        return None
    if mode == "anchors":
        from autoattack_anchors import ANCHORS
        anchors = json.loads(ANCHORS.read_text()) if ANCHORS.is_file() else {}
        for a in anchors.values():
            if a["model"] == key and a["threat"] == norm and abs(a["eps"] - eps) < 1e-9 and a["n"] >= len(y):
                return {k: (v[:len(y)] if isinstance(v, list) and len(v) == a["n"] else v) for k, v in a.items()} | \
                    {"source": f"anchor ({a['n']} images, {a['time_s']:.0f} s on {a['threads']} thread(s) for all)"}
        print(f"  no AutoAttack anchor for {key} {norm} {eps:g} on {len(y)} images: --autoattack run")
        return None
    from autoattack_anchors import run_autoattack
    torch.manual_seed(0)
    out = run_autoattack(model, x, y, norm, eps)
    out.pop("x_adv")
    return out | {"source": "live"}


def row(cells: list) -> str:
    return "| " + " | ".join("-" if c is None else f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def l2_peers_gap(res: dict, peers: dict, v: str) -> None:
    """The L2 peers' worst case beside ours and the pointwise gap P_peers(D) - P_ours(D)."""
    per = res["threat_models"]["l2"][v]["per_sample"]
    wc = torch.tensor([float("inf") if d is None else d for d in per], dtype=torch.float64)
    ours = (torch.isfinite(wc), wc)
    for label, (ok, d) in peers.items():
        s = summarize(ok, d, 2.0)
        print(row([f"peer {label}", len(d), s["p_suc"], s["d_bar"], s["p_upp"], None]))
    ps, pd = least_distortion(torch.stack([s for s, _ in peers.values()]), torch.stack([d for _, d in peers.values()]))
    s = summarize(ps, pd, 2.0)
    print(row(["**peers: worst case**", len(pd), s["p_suc"], s["d_bar"], s["p_upp"], None]))
    found = torch.cat([wc[torch.isfinite(wc)], pd[ps]])
    grid = torch.linspace(0, float(found.max()) if found.numel() else 1.0, 400, dtype=torch.float64)
    gap = operating_characteristic(ps, pd, grid) - operating_characteristic(*ours, grid)
    at = torch.tensor(GAP_AT["l2"], dtype=torch.float64)
    gap_at = operating_characteristic(ps, pd, at) - operating_characteristic(*ours, at)
    i = int(gap.argmax())
    print(f"\ngap P_peers(D) - P_ours(D) (L2): max {float(gap[i]):+.3f} at D = {float(grid[i]):.2f}; "
          + ", ".join(f"D={d:g}: {float(g):+.3f}" for d, g in zip(GAP_AT["l2"], gap_at))
          + f"; ours no larger than the peers' on {int((wc <= pd + 1e-9).sum())} of {len(wc)} images")


def eps_value(text: str) -> float:
    return float(Fraction(text))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="first N test images (the correct ones are attacked)")
    p.add_argument("--model", default="c4",
                   help="lenet5 (advertorch's Madry LeNet5), resnet18 (AutoAttack's CIFAR-10 ResNet-18), or a "
                        "Madry recipe: c4 (default) or lenet (with --lr 1e-4)")
    p.add_argument("--threat", default="l2,linf", help="threat models (default l2,linf)")
    p.add_argument("--budget", action="append", default=[], metavar="NORM=EPS",
                   help="budget per norm (fractions allowed: linf=1/255); default the dataset's standard ones")
    p.add_argument("--autoattack", choices=("anchors", "run", "none"), default="anchors",
                   help="AutoAttack standard beside the suite: from bench/autoattack_anchors.py's anchors "
                        "(default), run now (timed), or not at all")
    p.add_argument("--epochs", type=int, default=12, help="epochs of Madry's recipe")
    p.add_argument("--pgd-steps", type=int, default=None, help="cheaper recipe: inner PGD steps (default 40)")
    p.add_argument("--pgd-alpha", type=float, default=None, help="cheaper recipe: inner PGD step (default 0.01)")
    p.add_argument("--clean-epochs", type=int, default=0, help="clean epochs before adversarial training")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate of the recipe (LeNet: 1e-4)")
    p.add_argument("--suite", default="reliable", help="reliable (default) or any suite name/file")
    p.add_argument("--peer-steps", type=int, default=1000)
    p.add_argument("--no-peers", action="store_true", help="no L2 minimum-norm peers")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="also write the suite's results.json, report.md, curves.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, x_all, y_all, dataset, what, key = subject(args)
    threats = parse_threats(args.threat)
    overrides = {k: eps_value(v) for k, _, v in (b.partition("=") for b in args.budget)}
    budgets = {t: b for t, b in standard_budgets(dataset, overrides).items() if t in threats}
    with torch.no_grad():
        correct = model(x_all).argmax(1) == y_all
    print(f"model: {what}\n  clean accuracy {correct.float().mean():.3f} on {len(y_all)} images ({dataset}); "
          f"threat models {budgets}; {torch.get_num_threads()} thread(s)")

    suite = reliable_available(dataset, threats, overrides) if args.suite == "reliable" else args.suite
    loader = DataLoader(TensorDataset(x_all, y_all), batch_size=args.batch)
    torch.manual_seed(0)
    c0 = time.process_time()
    res = run_suite(model, loader, suite, dataset=dataset, n=len(y_all), batch_size=args.batch, progress=False,
                    threats=threats, budgets=budgets, out_dir=args.out)
    ours_cpu = time.process_time() - c0  # CPU seconds: with one thread the cost, whatever the machine's load
    if args.out is not None:
        from advtrain.evaluation.report import plot_curves, write_report
        write_report(res, args.out / "report.md")
        plot_curves(res, args.out / "curves.png")
    X = torch.tensor(res["context"]["indices"], dtype=torch.long)
    ours_time = {t: sum(res["attacks"][k].get("time_s") or 0.0 for k in res["threat_models"][t]["attacks"])
                 for t in threats}
    peers: dict[str, dict] = {v: {} for v in VARIANTS}
    if "l2" in threats and not args.no_peers:
        for label, attack in peer_attacks(args.peer_steps).items():
            torch.manual_seed(0)
            out, seconds = run_peer(attack, model, x_all[X], y_all[X], args.batch)
            for v in VARIANTS:
                peers[v][label] = out[v]
            print(f"  {label}: {seconds:.0f} s", flush=True)
    aa_time = {}
    for norm in threats:
        eps = budgets[norm]
        tm = res["threat_models"][norm]
        aa = autoattack_peer(args.autoattack, key, model, x_all, y_all, norm, eps)
        if aa is not None:
            aa_time[norm] = aa["cpu_s"] if aa["source"] == "live" else None
        for v in VARIANTS:
            t = tm[v]
            print(f"\n## {norm} at eps {eps:g}, {v} (N' = {len(y_all)}, N = {len(X)})\n\n"
                  f"| attack | images run | P_suc | D-bar | P(D<={eps:g}) | time (s) |\n| --- | ---: | ---: | ---: | ---: | ---: |")
            for label, a in t["per_attack"].items():
                print(row([f"ours {label}", a["n_ran"], a["p_suc"], a["d_bar"], a["p_budget"], a["time_s"]]))
            print(row([f"**ours: worst case ({args.suite})**", t["n"], t["p_suc"], t["d_bar"], t["p_upp"],
                       ours_time[norm]]))
            robust = t["robust_accuracy"]
            line = f"\nrobust accuracy at {eps:g}: ours {robust:.3f}"
            if aa is not None:
                theirs = aa["broken" if v == "unquantized" else "broken_quantized"]
                aa_set = {i for i, b in enumerate(theirs) if b} | {i for i in range(len(y_all)) if not correct[i]}
                mine = broken_images(res, norm, v)
                ra = aa["robust_accuracy" if v == "unquantized" else "robust_accuracy_quantized"]
                line += (f", AutoAttack standard {ra:.3f} ({aa['source']}); images AutoAttack breaks that the suite "
                         f"does not: {sorted(aa_set - mine) or 'none'}; the suite breaks {len(mine - aa_set)} that "
                         "AutoAttack does not")
            print(line)
            if norm == "l2" and peers[v]:
                l2_peers_gap(res, peers[v], v)
    print(f"\ncost (CPU seconds, {torch.get_num_threads()} thread(s): wall time is noise on a shared machine): "
          f"the suite {ours_cpu:.0f} s (wall per threat model: "
          + ", ".join(f"{t} {s:.0f} s" for t, s in ours_time.items()) + ")"
          + (f"; AutoAttack standard {sum(aa_time.values()):.0f} s (live, "
             + ", ".join(f"{t} {s:.0f} s" for t, s in aa_time.items()) + f"): ratio {ours_cpu / sum(aa_time.values()):.2f}"
             if aa_time and all(s is not None for s in aa_time.values()) else ""))

if __name__ == "__main__":
    main()
