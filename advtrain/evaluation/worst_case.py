"""The suite's conclusion, computed once per change of the results: the per-image worst case over
the attacks (thesis 3.3.2: the least distortion any attack needed) and the sanity checks."""
from __future__ import annotations

import torch

from .metrics import least_distortion, per_sample_distortion, summarize
from .sanity import check_names, sanity_checks
from .threats import threat_models


def worst_case(attacks: dict, variants: tuple[str, ...], d_upp: float, points: int) -> dict:
    """Per variant, the statistics of the per-image least distortion over the finished attacks, and
    ``by_attack``: how many images each attack gave the least distortion of."""
    done = {k: e for k, e in attacks.items() if e.get("status") == "done"}
    out = {}
    for v in variants:
        if not done:
            continue
        runs = [per_sample_distortion(e[v]) for e in done.values()]
        success, dist = least_distortion(torch.stack([s for s, _ in runs]), torch.stack([d for _, d in runs]))
        best_attack = torch.stack([d for _, d in runs]).argmin(dim=0)
        stats = summarize(success, dist, d_upp, points)
        stats["by_attack"] = {lab: int(((best_attack == i) & success).sum()) for i, lab in enumerate(done)}
        stats["per_sample"] = {"l2": [d if f else None for d, f in zip(dist.tolist(), success.tolist())]}
        out[v] = stats
    return out


def conclude(results: dict, variants: tuple[str, ...], d_upp: float, points: int) -> None:
    """Set ``results``' ``worst_case`` (the thesis': least L2 over every attack), ``threat_models`` (per
    norm, over that norm's attacks), ``warnings`` and ``failed_checks`` from its attacks (the sanity
    checks run once for both)."""
    results["worst_case"] = worst_case(results["attacks"], variants, d_upp, points)
    results["threat_models"] = threat_models(results, variants, points)
    findings = sanity_checks(results)
    results["warnings"] = [f.message for f in findings]
    results["failed_checks"] = check_names(findings)
