"""One attack of a suite on one batch: its runs (the eps sweep of distortion attacks, once per
quantization variant for attacks that round inside their loop), the least-distortion success per
image over them (thesis 3.3.2), and the attack's results entry assembled from every batch."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.base import AttackContext, BestTracker
from ..nn.state import frozen_eval
from ..ops.norms import NORMS, l2_norm, quantize as quantize_8bit, quantize_within
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


def _quantized(spec: AttackSpec, x_adv: Tensor, x: Tensor, eps: float | None) -> Tensor:
    """The 8-bit image of a returned adversarial: inside the attack's ball when it has a budget."""
    return quantize_8bit(x_adv) if eps is None else quantize_within(x_adv, x, eps, spec.threat or "l2")


def scored_success(label: str, score_model: nn.Module, x_adv: Tensor, y: Tensor, draws: int = 1) -> Tensor:
    """Per image: the evaluated (defended) model misclassifies ``x_adv`` on at least one of ``draws``
    calls (a randomized model: the image survives only if it survives every draw). An image that is no
    image (NaN, Inf or pixels outside [0, 1]) or that the model maps to non-finite logits is never a
    success: the attack's batch is refused (recorded as a crash, never counted as robustness or success)."""
    flat = x_adv.detach().flatten(1)
    bad = int((~(torch.isfinite(flat) & (flat >= 0) & (flat <= 1)).all(1)).sum())
    if bad:
        raise ValueError(f"{label} returned {bad} adversarial image(s) with NaN, Inf or pixels outside [0, 1]: "
                         "not scored")
    wrong = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    with torch.no_grad():
        for _ in range(draws):
            logits = score_model(x_adv)
            bad = int((~torch.isfinite(logits).all(1)).sum())
            if bad:
                raise ValueError(f"the model returns NaN or Inf logits on {bad} adversarial image(s) of {label}: "
                                 "not scored")
            wrong |= logits.argmax(dim=1) != y
    return wrong


def attack_batch(spec: AttackSpec, attack_model: nn.Module, score_model: nn.Module, x: Tensor, y: Tensor,
                 variants: tuple[str, ...], encoder: Any = None, skip: list[Tensor] | None = None,
                 draws: int = 1) -> dict:
    """All runs of one attack on one batch: per variant the least-distortion success over runs in each
    norm (``found``; ``l2`` and the adversarial ``best`` of least L2; ``dist``: norm -> least distortion in
    that norm), successes ``by_budget``, ``perceptual``, and the gradients of every run (``grads``).
    ``skip`` (cascade): per run, the images not to attack (already broken within that budget); ``ran``
    marks the images attacked in at least one run, ``ran_by_budget`` counts them per run. Success:
    misclassified by one of ``draws`` calls of ``score_model`` (a randomized model; 1 for a
    deterministic one)."""
    trackers = {v: {n: BestTracker(x, d) for n, d in NORMS.items()} for v in variants}
    by_budget: dict[str, list[int]] = {v: [] for v in variants}
    grads: list[int] = []
    ran = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    ran_by_budget: list[int] = []
    for r, eps in enumerate(spec.runs()):
        todo = ~skip[r].to(x.device) if skip is not None else torch.ones_like(ran)
        ran |= todo
        ran_by_budget.append(int(todo.sum()))
        if not bool(todo.any()):
            for v in variants:
                by_budget[v].append(0)
            continue
        xs, ys = x[todo], y[todo]
        if spec.quantize_mode == "post":
            res = spec.build(eps)(attack_model, xs, ys)
            grads.append(res.grads)
            advs = {v: _quantized(spec, res.x_adv, xs, eps) if v == "quantized" else res.x_adv for v in variants}
        else:
            advs = {}
            for v in variants:
                res = spec.build(eps, quantize=v == "quantized")(attack_model, xs, ys)
                grads.append(res.grads)
                advs[v] = res.x_adv
        for v, x_run in advs.items():
            x_adv = x.clone()
            x_adv[todo] = x_run.to(x.dtype)
            success = torch.zeros_like(todo)
            success[todo] = scored_success(spec.label, score_model, x_run, ys, draws)  # scored on the evaluated (defended) model
            for t in trackers[v].values():
                t.update(x_adv, success)
            by_budget[v].append(int(success.sum()))
    out: dict[str, Any] = {"grads": grads, "ran": ran.cpu(), "ran_by_budget": ran_by_budget}
    for v, ts in trackers.items():
        best, found = ts["l2"].result()
        out[v] = {"found": found.cpu(), "l2": ts["l2"].best_l2.cpu(), "best": best.detach(),
                  "dist": {n: t.best_l2.cpu() for n, t in ts.items()},
                  "by_budget": by_budget[v], "perceptual": perceptual(x, best, encoder)}
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
    ran = torch.cat([p["ran"] for p in parts]) if parts else torch.zeros(0, dtype=torch.bool)
    entry["norm"] = spec.threat
    entry["n_ran"] = int(ran.sum())
    runs = spec.runs()
    ran_by_budget = [sum(p["ran_by_budget"][i] for p in parts) for i in range(len(runs))]
    for v in variants:
        found = torch.cat([p[v]["found"] for p in parts]) if parts else torch.zeros(0, dtype=torch.bool)
        dist = {k: torch.cat([p[v]["dist"][k] for p in parts]).double() if parts else torch.zeros(0)
                for k in NORMS}
        # the legacy (thesis) statistics: L2, on the images the attack ran on (all but for a cascade)
        stats = summarize(found[ran], dist["l2"][ran], d_upp, points)
        stats["linf_mean"] = float(dist["linf"][found].mean()) if bool(found.any()) else float("nan")
        stats["p_suc_by_budget"] = [
            {"eps": eps, "p_suc": sum(p[v]["by_budget"][i] for p in parts) / max(ran_by_budget[i], 1),
             "n_ran": ran_by_budget[i]} for i, eps in enumerate(runs)] if spec.budgets is not None else []
        stats["per_sample"] = {k: [d if f else None for d, f in zip(dist[k].tolist(), found.tolist())]
                               for k in NORMS}
        stats["per_sample"]["ran"] = ran.tolist()
        keys = parts[0][v]["perceptual"] if parts else []
        per = {k: torch.cat([p[v]["perceptual"][k] for p in parts]) for k in keys}
        stats["perceptual"] = summarize_perceptual(found, per)
        stats["per_sample"]["ssim"] = [d if f else None for d, f in zip(per["ssim"].tolist(), found.tolist())] \
            if "ssim" in per else []
        entry[v] = stats
    return entry
