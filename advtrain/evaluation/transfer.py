"""Transfer evaluation: craft adversarial images on source models, score them on target models.

For each attack (each eps of its sweep), source and seed, the images are crafted once on the
source and fed to every target. A cell M[attack][source][target] is the attack success rate
(the target misclassifies the crafted image) over the images that *every* model classifies
correctly, so a success is never a clean error and all cells share one denominator (this is
torchattack's fooling rate too). A target with the same weights as the source (same content hash,
e.g. the same file given twice) is the white-box cell, marked ``*``. Per source: the crafted
images' L2, Linf and SSIM (torchmetrics), gradients and CPU time per image against the
attack's forward+backward floor. Mean +- std over seeds. FEATURE_ATTACKS.md section 4.

Resumable: transfer.json is rewritten after every (attack, source, seed) cell; a rerun keeps the
cells whose key (attack options, eps, the source's and targets' weight hashes) is unchanged.
Under torch.distributed the batches are sharded across ranks as in ``run_suite``.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.base import AttackContext
from ..attacks.losses import get_loss
from ..ops.norms import l2_norm, linf_norm
from ..distributed import batch_seed, broadcast, dist_info, gather, my_batches
from ..io.fingerprint import weights_tag
from ..nn.state import eval_mode, frozen_eval
from .resume import canon as _canon, write_json as _write_json
from .sweep import chunks as _chunks, predict as _predict
from .suite import AttackSpec

METRIC = "attack success rate (%) over the images every model classifies correctly"


def ssim(x: Tensor, x_adv: Tensor) -> Tensor:
    """Per-image SSIM (torchmetrics, 11x11 Gaussian window, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    return structural_similarity_index_measure(x_adv.float(), x.float(), data_range=1.0, reduction="none")


def _runs(specs: list[AttackSpec]) -> list[tuple[str, AttackSpec, float | None]]:
    """(label, spec, eps): one run per eps of a sweep, labelled ``label@eps``."""
    out = []
    for s in specs:
        if s.budgets is None:
            out.append((s.label, s, None))
        else:
            out += [(f"{s.label}@{eps:g}" if len(s.budgets) > 1 else s.label, s, eps) for eps in s.budgets]
    return out


def check_zoo(specs: list[AttackSpec], sources: dict[str, nn.Module], targets: dict[str, nn.Module],
              x: Tensor) -> int:
    """One-line errors for an empty zoo, models with different numbers of classes and unknown
    layers; returns the number of classes."""
    if not sources or not targets:
        raise ValueError(f"transfer needs at least one source and one target model, got {len(sources)} "
                         f"source(s) and {len(targets)} target(s) (empty zoo?)")
    if not specs:
        raise ValueError("transfer needs at least one attack")
    other = [f"{s.label} ({s.family})" for s in specs if s.family != "distortion"]
    if other:
        raise ValueError(f"transfer crafts adversarials at a fixed budget; {', '.join(other)} are not distortion "
                         "attacks (minimum-norm or unrestricted): use a suite of budgeted attacks (e.g. transfer_mnist)")
    widths, logits = {}, {}
    for name, m in {**sources, **targets}.items():
        with frozen_eval(m), torch.no_grad():
            logits[name] = m(x[:1])
            widths[name] = int(logits[name].shape[1])
    if len(set(widths.values())) > 1:
        raise ValueError("source and target models must have the same number of classes, got "
                         + ", ".join(f"{k}: {v}" for k, v in widths.items()))
    for s in specs:
        check = getattr(s.build(s.runs()[0]), "check_model", None)  # e.g. the tapped layer exists
        for name, m in sources.items():
            if check is not None:
                try:
                    check(m, logits[name])
                except ValueError as e:
                    raise ValueError(f"attack {s.label!r} on source {name!r}: {e}") from None
    return next(iter(widths.values()))


def fb_time(model: nn.Module, x: Tensor, y: Tensor, reps: int = 3) -> float:
    """CPU seconds per image of one forward+backward of ``model`` (the floor of a gradient attack;
    CPU time, as the attacks' times, is steadier than wall time on a shared machine)."""
    with frozen_eval(model), torch.enable_grad():
        ctx = AttackContext(model, x, y, None, get_loss("ce"))
        ctx.loss_and_grad(x)  # warm-up
        t0 = time.process_time()
        for _ in range(reps):
            ctx.loss_and_grad(x)
    return (time.process_time() - t0) / reps / len(y)


def _cell(spec: AttackSpec, eps: float | None, label: str, src: str, source: nn.Module,
          targets: dict[str, nn.Module], x_all: Tensor, y_all: Tensor, batches: list[Tensor], seed: int,
          quantize: bool) -> dict:
    """This rank's share of one (attack, source, seed) cell: success counts per target, sums of
    distortions, gradients and time."""
    part = {"n": 0, "success": {t: 0 for t in targets}, "l2": 0.0, "linf": 0.0, "ssim": 0.0, "grads": 0,
            "time": 0.0}
    for b in my_batches(len(batches)):
        idx = batches[b]
        x, y = x_all[idx], y_all[idx]
        torch.manual_seed(batch_seed(seed, f"{label}|{src}", b))
        t0 = time.process_time()
        res = spec.build(eps, quantize=quantize)(source, x, y)
        part["time"] += time.process_time() - t0
        x_adv = res.x_adv
        for t, model in targets.items():
            part["success"][t] += int((_predict(model, x_adv) != y).sum())
        part["n"] += len(y)
        part["grads"] += res.grads * len(y)
        part["l2"] += float(l2_norm(x_adv - x).sum())
        part["linf"] += float(linf_norm(x_adv - x).sum())
        part["ssim"] += float(ssim(x, x_adv).sum())
    return part


def _merge(parts: list[dict]) -> dict:
    n = sum(p["n"] for p in parts)
    out = {"n": n, "success": {t: sum(p["success"][t] for p in parts) for t in parts[0]["success"]},
           "time_s": sum(p["time"] for p in parts)}
    for k in ("l2", "linf", "ssim", "grads"):
        out[k] = sum(p[k] for p in parts) / max(n, 1)
    out["time_per_image_s"] = out["time_s"] / max(n, 1)
    return out


def _mean_std(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0, "runs": values}


def summarize(results: dict) -> dict:
    """The matrices: per attack, per source, per target the success rate mean +- std over seeds,
    white-box flags, the average over the transfer (non-white-box) targets, and distortions."""
    ctx, cells = results["context"], results["cells"]
    summary: dict[str, Any] = {}
    for label in ctx["attacks"]:
        rows = {}
        for src, src_hash in ctx["sources"].items():
            done = [c for c in cells.values() if c["attack"] == label and c["source"] == src and "n" in c]
            if not done:
                continue
            row: dict[str, Any] = {"targets": {}}
            for tgt, tgt_hash in ctx["targets"].items():
                row["targets"][tgt] = {**_mean_std([100.0 * c["success"][tgt] / c["n"] for c in done]),
                                       "white_box": tgt_hash == src_hash}
            transfer = [v["mean"] for v in row["targets"].values() if not v["white_box"]]
            row["avg_transfer"] = sum(transfer) / len(transfer) if transfer else None
            for k in ("l2", "linf", "ssim", "grads", "time_per_image_s"):
                row[k] = _mean_std([c[k] for c in done])
            floor = ctx.get("fb_time_per_image_s", {}).get(src)
            row["floor_per_image_s"] = floor * row["grads"]["mean"] if floor else None
            row["seeds"] = sorted(c["seed"] for c in done)
            rows[src] = row
        summary[label] = rows
    return summary


def previous_cells(path: Path, ctx: dict) -> dict:
    """The finished cells of ``path`` (an earlier run on the same images and settings), or ``{"error": ...}``:
    a transfer.json that does not parse, or holds another evaluation, is kept, never overwritten."""
    keep = "it is kept; choose another --out (or move it away)"
    try:
        old = json.loads(path.read_text())
        cells = old["cells"]
        assert isinstance(old["context"], dict) and isinstance(cells, dict)
    except (ValueError, KeyError, TypeError, AssertionError, OSError):
        return {"error": f"{path} is not a readable transfer.json (damaged or truncated): {keep}"}
    same = {k: old["context"].get(k) for k in ("indices", "quantize", "batch_size")}
    if same != _canon({k: ctx[k] for k in same}):
        differ = ", ".join(k for k in same if same[k] != _canon(ctx[k]))
        return {"error": f"{path} holds a transfer evaluation of other {differ}: {keep}"}
    return cells


def transfer_matrix(specs: list[AttackSpec], sources: dict[str, nn.Module], targets: dict[str, nn.Module],
                    x: Tensor, y: Tensor, *, seeds: list[int] = (0,), batch_size: int = 100,
                    quantize: bool = True, out_dir: str | Path | None = None, context: dict | None = None,
                    progress: bool = True) -> dict:
    """Craft with every attack on every source (once per seed), score on every target.

    Args:
        specs: attacks (``AttackSpec``; a budget sweep gives one run per eps, labelled ``label@eps``).
        sources, targets: name -> classifier on [0, 1] pixels (the same model may be in both).
        x, y: the test images (N'); the cells use the ones every model classifies correctly.
        quantize: 8-bit crafted images (the transfer papers save PNGs).
        out_dir: transfer.json is rewritten after every cell; a rerun skips finished cells.
    Returns the results (context, cells, summary) as written to transfer.json.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not seeds:
        raise ValueError("seeds must list at least one seed")
    check_zoo(specs, sources, targets, x)
    models = {**sources, **targets}
    with contextlib.ExitStack() as modes:  # eval mode inside, every model's training flags restored after
        for m in models.values():
            modes.enter_context(eval_mode(m))
        rank, world = dist_info()
        correct = torch.ones(len(y), dtype=torch.bool)
        for m in models.values():
            correct &= torch.cat([(_predict(m, x[i]) == y[i]).cpu() for i in _chunks(torch.arange(len(y)), batch_size)])
        X = correct.nonzero().flatten()
        if len(X) == 0:
            raise ValueError("no test image is classified correctly by every model: nothing to attack")
        runs = _runs(specs)
        hashes = {k: weights_tag(m) for k, m in models.items()}
        ctx = {**(context or {}), "metric": METRIC, "n_prime": len(y), "n": len(X), "indices": X.tolist(),
               "quantize": quantize, "batch_size": batch_size, "seeds": list(seeds),
               "sources": {k: hashes[k] for k in sources}, "targets": {k: hashes[k] for k in targets},
               "attacks": [label for label, _, _ in runs]}
        out_path = Path(out_dir) / "transfer.json" if out_dir is not None else None
        previous = broadcast(previous_cells(out_path, ctx) if rank == 0 and out_path is not None and out_path.is_file()
                             else {})
        if "error" in previous:
            raise ValueError(previous["error"])
        results: dict[str, Any] = {"context": ctx, "cells": previous}
        results["context"] = ctx
        x_all, y_all = x[X], y[X]
        batches = _chunks(torch.arange(len(X)), batch_size)
        probe = x_all[:min(batch_size, len(X))], y_all[:min(batch_size, len(X))]
        ctx["fb_time_per_image_s"] = {k: fb_time(m, *probe) for k, m in sources.items()}

        todo = []
        for label, spec, eps in runs:
            for src in sources:
                for seed in seeds:
                    key = _canon({"attack": spec.as_dict(), "eps": eps, "source": hashes[src], "seed": seed,
                                  "targets": ctx["targets"]})
                    cid = f"{label}|{src}|{seed}"
                    if results["cells"].get(cid, {}).get("key") == key:
                        continue
                    todo.append((cid, label, spec, eps, src, seed, key))
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(todo), desc="transfer", unit="cell")
        for cid, label, spec, eps, src, seed, key in todo:
            part = _cell(spec, eps, label, src, sources[src], targets, x_all, y_all, batches, seed, quantize)
            results["cells"][cid] = {"attack": label, "source": src, "seed": seed, "eps": eps, "key": key,
                                     **_merge(gather(part))}
            if rank == 0 and out_path is not None:
                results["summary"] = summarize(results)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                _write_json(out_path, results)
            if bar is not None:
                bar.set_description(cid)
                bar.update(1)
        if bar is not None:
            bar.close()
        current = {f"{label}|{s}|{seed}" for label, _, _ in runs for s in sources for seed in seeds}
        results["cells"] = {k: v for k, v in results["cells"].items() if k in current}
        results["summary"] = summarize(results)
        if rank == 0 and out_path is not None:
            _write_json(out_path, results)
        return _canon(results)
