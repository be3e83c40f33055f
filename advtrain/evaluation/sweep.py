"""One attack of a suite on one batch: its runs (the eps sweep of distortion attacks, once per
quantization variant for attacks that round inside their loop), the least-distortion success per
image over them (thesis 3.3.2), and the attack's results entry assembled from every batch."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.base import AttackContext, BestTracker, frozen_eval
from ..ops.norms import l2_norm, linf_norm, quantize as quantize_8bit
from .metrics import summarize
from .perceptual import perceptual, summarize_perceptual
from .suite import AttackSpec


def chunks(idx: Tensor, size: int) -> list[Tensor]:
    """``idx`` in consecutive batches of ``size`` (none when empty)."""
    return list(idx.split(size)) if len(idx) else []


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """The model's predicted classes (no gradient)."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


def scored_success(label: str, score_model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    """Per image: the evaluated (defended) model misclassifies ``x_adv``. An image that is no image (NaN,
    Inf or pixels outside [0, 1]) or that the model maps to non-finite logits is never a success: the
    attack's batch is refused (recorded as a crash, never counted as robustness or as success)."""
    flat = x_adv.detach().flatten(1)
    bad = int((~(torch.isfinite(flat) & (flat >= 0) & (flat <= 1)).all(1)).sum())
    if bad:
        raise ValueError(f"{label} returned {bad} adversarial image(s) with NaN, Inf or pixels outside [0, 1]: "
                         "not scored")
    with torch.no_grad():
        logits = score_model(x_adv)
    bad = int((~torch.isfinite(logits).all(1)).sum())
    if bad:
        raise ValueError(f"the model returns NaN or Inf logits on {bad} adversarial image(s) of {label}: not scored")
    return logits.argmax(dim=1) != y


def attack_batch(spec: AttackSpec, attack_model: nn.Module, score_model: nn.Module, x: Tensor, y: Tensor,
                 variants: tuple[str, ...], encoder: Any = None) -> dict:
    """All runs of one attack on one batch: per variant the least-distortion success over runs
    (``found``, ``l2``, ``linf``, the adversarial ``best``, successes ``by_budget``, ``perceptual``), and
    the gradients of every run (``grads``)."""
    trackers = {v: BestTracker(x) for v in variants}
    by_budget: dict[str, list[int]] = {v: [] for v in variants}
    grads: list[int] = []
    for eps in spec.runs():
        if spec.quantize_mode == "post":
            res = spec.build(eps)(attack_model, x, y)
            grads.append(res.grads)
            advs = {v: quantize_8bit(res.x_adv) if v == "quantized" else res.x_adv for v in variants}
        else:
            advs = {}
            for v in variants:
                res = spec.build(eps, quantize=v == "quantized")(attack_model, x, y)
                grads.append(res.grads)
                advs[v] = res.x_adv
        for v, x_adv in advs.items():
            success = scored_success(spec.label, score_model, x_adv, y)
            trackers[v].update(x_adv, success)
            by_budget[v].append(int(success.sum()))
    out: dict[str, Any] = {"grads": grads}
    for v, t in trackers.items():
        best, found = t.result()
        out[v] = {"found": found.cpu(), "l2": t.best_l2.cpu(), "linf": linf_norm(best - x).cpu(),
                  "best": best.detach(), "by_budget": by_budget[v], "perceptual": perceptual(x, best, encoder)}
    return out


def zero_grad_count(spec: AttackSpec, attack_model: nn.Module, x: Tensor, y: Tensor) -> int:
    """Images whose attack-loss gradient at the clean input is exactly zero (gradient masking)."""
    loss_fn = spec.build(spec.runs()[0]).loss_fn
    with frozen_eval(attack_model), torch.enable_grad():
        _, _, g = AttackContext(attack_model, x, y, None, loss_fn).loss_and_grad(x)
    return int((l2_norm(g) == 0).sum())


def summarize_attack(spec: AttackSpec, parts: list[dict], n: int, variants: tuple[str, ...], d_upp: float,
                     points: int) -> dict:
    """Assemble the per-batch outputs of all ranks (sorted by batch) into the attack's entry."""
    parts = sorted(parts, key=lambda p: p["batch"])
    sizes = [len(p[variants[0]]["found"]) for p in parts]
    entry: dict[str, Any] = {
        "attack": spec.attack, "family": spec.family, "key": spec.as_dict(), "status": "done",
        "grads": sum(sum(p["grads"]) * s for p, s in zip(parts, sizes)) / max(n, 1),
        "grads_per_run": max((g for p in parts for g in p["grads"]), default=0),
        "zero_grad_rate": sum(p["zero_grad"] for p in parts) / max(n, 1),
    }
    for v in variants:
        found = torch.cat([p[v]["found"] for p in parts]) if parts else torch.zeros(0, dtype=torch.bool)
        l2 = torch.cat([p[v]["l2"] for p in parts]).double() if parts else torch.zeros(0)
        linf = torch.cat([p[v]["linf"] for p in parts]).double() if parts else torch.zeros(0)
        stats = summarize(found, l2, d_upp, points)
        stats["linf_mean"] = float(linf[found].mean()) if bool(found.any()) else float("nan")
        runs = spec.runs()
        stats["p_suc_by_budget"] = [
            {"eps": eps, "p_suc": sum(p[v]["by_budget"][i] for p in parts) / max(n, 1)}
            for i, eps in enumerate(runs)] if spec.budgets is not None else []
        stats["per_sample"] = {"l2": [d if f else None for d, f in zip(l2.tolist(), found.tolist())],
                               "linf": [d if f else None for d, f in zip(linf.tolist(), found.tolist())]}
        keys = parts[0][v]["perceptual"] if parts else []
        per = {k: torch.cat([p[v]["perceptual"][k] for p in parts]) for k in keys}
        stats["perceptual"] = summarize_perceptual(found, per)
        stats["per_sample"]["ssim"] = [d if f else None for d, f in zip(per["ssim"].tolist(), found.tolist())] \
            if "ssim" in per else []
        entry[v] = stats
    return entry
