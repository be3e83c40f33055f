#!/usr/bin/env python
"""Patch replacement cost on CPU (thesis 6.4, "Cost of patch replacement"): codebook fit time and
defended inference time relative to the plain model, for the image layer and the first conv of C4
trained on the embedded MNIST. ``--attacks`` adds thesis Table 6.2 / 6.4 in miniature (DDN-20 not
seeing the defense; BPDA-DDN-20 against patch replacement, bit depth and median smoothing).

    python bench/patch_replacement.py                 # timings
    python bench/patch_replacement.py --attacks 100   # + attacks on 100 test images
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import bench.attacks as timing  # noqa: E402  (median_ratio)
from advtrain.attacks import build_attack  # noqa: E402
from advtrain.data import build_datamodule  # noqa: E402
from advtrain.defenses import build_defense  # noqa: E402
from advtrain.defenses.defended import Defended  # noqa: E402
from advtrain.defenses.patch_replacement import PatchReplacement  # noqa: E402
from conftest import cached_c4  # noqa: E402  (the tests' trained C4, trained and cached when missing)

CONFIGS = {
    "image PQ K=128 (3x3, c=1)": [dict(layer="image", K=128)],
    "conv1 PQ d=4 K=256 (3x3, c=1)": [dict(layer="net.features.0", d=4, K=256)],
    "conv1 E8 d=8 s=1 (3x3, c=3)": [dict(layer="net.features.0", d=8, c=3, codebook="e8", scale=1.0)],
    "image PQ + conv1 PQ Linf 0.1": [dict(layer="image", K=128),
                                     dict(layer="net.features.0", d=4, K=256, strategy="linf", strength=0.1)],
}


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def timings(model, dm, x, y, max_patches: int, repeats: int) -> list[dict]:
    """Per config: fit time, and defended / plain inference as the median of per-repeat ratios (the
    two timed back to back, so load changes on a shared machine affect both alike)."""
    rows = []
    for name, layers in CONFIGS.items():
        t = time.perf_counter()
        defended = PatchReplacement(model, layers).fit(dm.train_dataloader(), max_patches=max_patches)
        fit = time.perf_counter() - t
        with torch.no_grad():
            infer, slowdown = timing.median_ratio(lambda: defended(x), lambda: model(x), repeats)
        plain = infer / slowdown
        rows.append({"config": name, "fit_s": fit, "plain_ms": 1e3 * plain, "defended_ms": 1e3 * infer,
                     "slowdown": slowdown, "acc_plain": accuracy(model, x, y),
                     "acc_defended": accuracy(defended, x, y)})
        print(f"| {name} | {fit:.1f} | {1e3 * plain:.0f} | {1e3 * infer:.0f} | {infer / plain:.1f}x | "
              f"{rows[-1]['acc_plain']:.3f} | {rows[-1]['acc_defended']:.3f} |", flush=True)
    return rows


def ddn(model, x, y):
    torch.manual_seed(0)
    return build_attack("ddn", steps=20)(model, x, y)


def attacks(model, dm, x, y, n: int, max_patches: int) -> dict:
    defended = PatchReplacement(model, CONFIGS["image PQ K=128 (3x3, c=1)"]).fit(
        dm.train_dataloader(), max_patches=max_patches)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    xc, yc = x[keep][:n], y[keep][:n]
    res = ddn(model, xc, yc)
    with torch.no_grad():
        still = defended(res.x_adv).argmax(1) != yc
    out = {"blackbox_ddn20": {"p_suc_plain": float(res.success.float().mean()),
                              "d_bar_plain": float(res.l2[res.success].mean()),
                              "p_suc_defended": float((res.success & still).float().mean())}}
    print(f"DDN-20 not seeing the defense (Table 6.2), {len(yc)} images: P_suc {out['blackbox_ddn20']}")
    candidates = {"patch_replacement": defended}
    for name, opts in (("bit_depth", {"bits": 3}), ("bit_depth", {"bits": 5}),
                       ("median", {"size": 2}), ("median", {"size": 3})):
        candidates[f"{name}{list(opts.values())[0]}"] = Defended(model, build_defense(name, **opts))
    out["bpda_ddn20"] = {}
    print("| defense | clean acc | BPDA-DDN-20 P_suc | D-bar | median D |")
    for name, d in candidates.items():
        with torch.no_grad():
            ok = d(x[:n]).argmax(1) == y[:n]
        r = ddn(d.attack_view("bpda"), x[:n][ok], y[:n][ok])
        with torch.no_grad():
            s = d(r.x_adv).argmax(1) != y[:n][ok]
        row = {"clean_acc": float(ok.float().mean()), "p_suc": float(s.float().mean()),
               "d_bar": float(r.l2[s].mean()), "d_median": float(r.l2[s].median())}
        out["bpda_ddn20"][name] = row
        print(f"| {name} | {row['clean_acc']:.3f} | {row['p_suc']:.3f} | {row['d_bar']:.3f} | {row['d_median']:.3f} |",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="test images for timing and accuracy")
    ap.add_argument("--max-patches", type=int, default=50_000, help="training patches per slice")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attacks", type=int, default=0, metavar="N", help="also run the attacks on N images")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, source = cached_c4()
    print(f"model: {source}")
    dm = build_datamodule("mnist_embedded", batch_size=128)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(min(args.n, len(dm.test_set)))])
    x, y = torch.stack(xs), torch.tensor(ys)
    print(f"CPU, {torch.get_num_threads()} threads, {len(y)} test images; inference = one batch of all of them")
    print("| config | fit s | plain ms | defended ms | slowdown | acc plain | acc defended |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = {"timings": timings(model, dm, x, y, args.max_patches, args.repeats)}
    if args.attacks:
        results.update(attacks(model, dm, x, y, args.attacks, args.max_patches))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
