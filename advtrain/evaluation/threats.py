"""Threat models, an axis of the evaluation: each Lp-attack belongs to the norm it bounds or
minimizes (its class's ``norm``); per threat model the protocol reports the per-image least
distortion in that norm over that norm's attacks, its P(D), and the robust accuracy at the
dataset's standard budget (AutoAttack / RobustBench: MNIST Linf 0.3, L2 2.0; CIFAR-10 Linf 8/255,
L2 0.5, L1 12; ImageNet Linf 4/255, L2 3.0). MNIST's L1 budget is 10, the one of the multiple-perturbation
literature (Tramer & Boneh 2019, "Adversarial training and robustness for multiple perturbations";
Maini et al. 2020, "Adversarial robustness against the union of multiple perturbation models": MNIST
Linf 0.3, L2 2.0, L1 10); ImageNet has none (give one with ``--budget l1=EPS``).

Robust accuracy follows RobustBench: the fraction of *all* N' evaluated images that are classified
correctly and not broken within the budget by any attack of that norm (clean errors count as
broken). ``threat_models`` builds ``results["threat_models"][norm]`` once; report and plots read it.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..data.specs import dataset_spec
from ..ops.norms import within_budget
from .metrics import least_distortion, per_sample_distortion, summarize

#: the norms a threat model may name (``NORMS``' keys), in report order
THREATS = ("linf", "l2", "l1")
#: AutoAttack / RobustBench standard budgets per dataset group (L1: Croce & Hein 2021, CIFAR-10; MNIST:
#: Tramer & Boneh 2019, Maini et al. 2020)
STANDARD_BUDGETS: dict[str, dict[str, float]] = {
    "mnist": {"linf": 0.3, "l2": 2.0, "l1": 10.0},
    "cifar10": {"linf": 8 / 255, "l2": 0.5, "l1": 12.0},
    "imagenet": {"linf": 4 / 255, "l2": 3.0},
}
NORM_TITLE = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def check_norm(name: str, what: str) -> str:
    """``name`` lower-cased if it is a known norm; a one-line error otherwise."""
    norm = str(name).strip().lower()
    if norm not in THREATS:
        raise ValueError(f"{what}: unknown norm {name!r}; known: {', '.join(THREATS)}")
    return norm


def parse_threats(text: str | list[str] | None) -> list[str] | None:
    """``"l2,linf"`` (or a list) -> ``["l2", "linf"]``; None stays None (every threat model of the suite)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    threats = [check_norm(t, "--threat") for t in items if str(t).strip()]
    if not threats:
        raise ValueError("--threat: give at least one norm (e.g. --threat l2,linf)")
    return list(dict.fromkeys(threats))


def parse_budgets(text: str | dict | None) -> dict[str, float]:
    """``"linf=0.3,l2=2"`` (or a dict) -> ``{"linf": 0.3, "l2": 2.0}``, each budget positive and finite."""
    if not text:
        return {}
    pairs = text.items() if isinstance(text, dict) else [p.partition("=")[::2] for p in text.split(",") if p.strip()]
    out = {}
    for key, value in pairs:
        norm = check_norm(key, "--budget")
        try:
            eps = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"--budget {key}={value!r}: the budget must be a number (e.g. linf=0.3)") from None
        if not (eps > 0 and eps < float("inf")):
            raise ValueError(f"--budget {key}={value}: the budget must be positive and finite")
        out[norm] = eps
    return out


def standard_budgets(dataset: str, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The dataset's standard budget per norm, with ``overrides`` (already parsed) on top."""
    return {**STANDARD_BUDGETS.get(dataset_spec(dataset).group, {}), **(overrides or {})}


def select_threats(specs: list, threats: list[str] | None, budgets: dict[str, float],
                   overrides: dict[str, float] | None = None) -> tuple[list, list[str]]:
    """The suite's entries of the chosen threat models (unrestricted attacks, which have no norm,
    always stay) and the threat models evaluated; one-line errors for a threat model without an
    attack, a budget override for a norm not evaluated, or a threat model without a budget."""
    have = [t for t in THREATS if any(s.threat == t for s in specs)]
    chosen = have if threats is None else threats
    missing = [t for t in chosen if t not in have]
    if missing:
        raise ValueError(f"--threat {','.join(missing)}: the suite has no attack for {', '.join(missing)} "
                         f"(its threat models: {', '.join(have) or 'none'})")
    stray = [t for t in (overrides or {}) if t not in chosen]
    if stray:
        raise ValueError(f"--budget {','.join(stray)}: not a threat model of this evaluation "
                         f"({', '.join(chosen) or 'none'})")
    unbudgeted = [t for t in chosen if t not in budgets]
    if unbudgeted:
        raise ValueError(f"threat model {', '.join(unbudgeted)} has no standard budget for this dataset: "
                         f"give one with --budget {unbudgeted[0]}=EPS")
    return [s for s in specs if s.threat is None or s.threat in chosen], chosen


def _p_within(success: torch.Tensor, dist: torch.Tensor, eps: float) -> float:
    """The fraction of the images broken within eps (``within_budget``)."""
    return float((success & within_budget(dist, eps)).sum()) / max(len(success), 1)


def _measured(entries: dict, eps: float) -> bool:
    """Whether the attacks can speak for the budget: a minimum-norm attack, or a fixed-budget one run
    at eps (one run only at other budgets searches another ball: it says nothing about eps)."""
    return any(e.get("family") == "success" or any(math.isclose(r, eps, rel_tol=1e-6) for r in e["key"]["budgets"] or [])
               for e in entries.values())


def threat_model(results: dict, norm: str, variant: str, eps: float, points: int) -> dict[str, Any] | None:
    """One threat model in one variant: the worst case over the finished attacks of ``norm`` (in
    ``norm``), the robust accuracy at ``eps`` over all N' images, the images each attack broke first
    within eps (suite order, AutoAttack's count), and each attack's own statistics on the images it
    ran on (a cascaded attack skips images already broken at its budget)."""
    done = {k: e for k, e in results["attacks"].items()
            if e.get("status") == "done" and e.get("norm") == norm and variant in e}
    if not done:
        return None
    runs = [per_sample_distortion(e[variant], norm) for e in done.values()]
    success, dist = least_distortion(torch.stack([s for s, _ in runs]), torch.stack([d for _, d in runs]))
    stats = summarize(success, dist, eps, points)
    stats["p_upp"] = _p_within(success, dist, eps)  # P(eps) up to float32 rounding, as the robust accuracy
    best = torch.stack([d for _, d in runs]).argmin(dim=0)
    stats["by_attack"] = {lab: int(((best == i) & success).sum()) for i, lab in enumerate(done)}
    stats["per_sample"] = [d if f else None for d, f in zip(dist.tolist(), success.tolist())]
    broken = torch.zeros_like(success)
    first: dict[str, int] = {}
    per_attack = {}
    for (label, e), (s, d) in zip(done.items(), runs):
        inside = s & within_budget(d, eps)
        first[label] = int((inside & ~broken).sum())
        broken |= inside
        ran = torch.tensor(e[variant]["per_sample"].get("ran") or [True] * len(s), dtype=torch.bool)
        a = summarize(s[ran], d[ran], eps, 2)
        per_attack[label] = {"n_ran": int(ran.sum()), "p_suc": a["p_suc"], "d_bar": a["d_bar"],
                             "p_budget": _p_within(s[ran], d[ran], eps), "time_s": e.get("time_s"),
                             "grads": e.get("grads"),
                             "curve": summarize(s, d, eps, points)["curve"]}  # over all of X: the plot's
    n_prime = results["context"]["n_prime"]
    measured = _measured(done, eps)
    robust = (len(success) - int(broken.sum())) / max(n_prime, 1)
    return {**stats, "budget": eps, "broken_at_budget": int(broken.sum()), "first_broken_by": first,
            "robust_accuracy": robust if measured else None, "measured_at_budget": measured,
            "robust_accuracy_upper": robust, "per_attack": per_attack}


def threat_models(results: dict, variants: tuple[str, ...], points: int) -> dict[str, dict]:
    """``results["threat_models"]``: per evaluated norm its budget, attacks and per-variant statistics."""
    ctx = results["context"]
    out = {}
    for norm in ctx.get("threats", []):
        eps = ctx["budgets"][norm]
        entry = {"budget": eps, "attacks": [k for k, e in results["attacks"].items() if e.get("norm") == norm]}
        for v in variants:
            tm = threat_model(results, norm, v, eps, points)
            if tm is not None:
                entry[v] = tm
        out[norm] = entry
    return out



def broken_images(results: dict, norm: str, variant: str) -> set[int]:
    """The indices (into the N' test images) broken within the budget of threat model ``norm``:
    misclassified clean images and those an attack of that norm broke (the complement of robust)."""
    ctx = results["context"]
    eps = ctx["budgets"][norm]
    X = ctx["indices"]
    per = results["threat_models"][norm][variant]["per_sample"]
    robust = {i for i, d in zip(X, per) if d is None or not bool(within_budget(torch.tensor(d), eps))}
    return set(range(ctx["n_prime"])) - robust
