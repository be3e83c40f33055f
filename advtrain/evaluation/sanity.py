"""Sanity checks against gradient masking (Athalye et al. 2018; thesis 6.6), as report warnings:
iterative attacks beat single-step ones, success never drops with the budget, unbounded attacks
reach success near 1, and input gradients are not zero."""
from __future__ import annotations

import torch

from .metrics import operating_characteristic

TOL = 0.02           # slack on success rates (sampling noise on small test sets)
UNBOUNDED_MIN = 0.95  # an unbounded (success-targeted) attack should succeed at least this often
ZERO_GRAD_MAX = 0.05  # tolerated rate of exactly-zero input gradients


def sanity_warnings(results: dict) -> list[str]:
    """Warnings for the attacks in ``results["attacks"]`` (entries as written by ``run_suite``)."""
    out: list[str] = []
    attacks = results.get("attacks", {})
    for label, e in attacks.items():
        if e.get("status") == "error":
            out.append(f"{label}: the attack crashed ({e.get('error')}); rerun to retry it")
    done = {k: e for k, e in attacks.items() if e.get("status") == "done"}
    # on real-valued images: rounding alone can undo near-boundary adversarials, which is no masking
    variants = [v for v in ("unquantized", "quantized") if any(v in e for e in done.values())][:1]
    for v in variants:
        single = {k: e[v] for k, e in done.items() if e.get("grads_per_run") == 1}
        iterative = {k: e[v] for k, e in done.items() if (e.get("grads_per_run") or 0) > 1}
        for ki, it in iterative.items():
            # compare at equal distortion: D_upp and the iterative attack's own D_max
            grid = [it["d_upp"]] + ([it["d_max"]] if it["n_suc"] else [])
            for ks, s in single.items():
                p_it, p_s = _p_at(it, grid), _p_at(s, grid)
                worse = [d for d, a, b in zip(grid, p_it, p_s) if a < b - TOL]
                if worse or (it["p_suc"] <= TOL < s["p_suc"]):
                    d = worse[0] if worse else it["d_upp"]
                    out.append(f"{ki} ({v}): the iterative attack is weaker than single-step {ks} "
                               f"(P_suc {it['p_suc']:.2f} vs {s['p_suc']:.2f}, P(D={d:.2f}) "
                               f"{p_it[grid.index(d)]:.2f} vs {p_s[grid.index(d)]:.2f}): gradient masking?")
        for k, e in done.items():
            curve = [b["p_suc"] for b in e[v].get("p_suc_by_budget", [])]
            drops = [i for i in range(1, len(curve)) if curve[i] < curve[i - 1] - TOL]
            if drops:
                eps = e[v]["p_suc_by_budget"]
                out.append(f"{k} ({v}): success decreases with the budget (P_suc {curve[drops[0] - 1]:.2f} at "
                           f"eps={eps[drops[0] - 1]['eps']:g} but {curve[drops[0]]:.2f} at "
                           f"eps={eps[drops[0]]['eps']:g}): gradient masking?")
            if e.get("family") == "success" and e[v]["p_suc"] < UNBOUNDED_MIN:
                out.append(f"{k} ({v}): the unbounded attack succeeds only on {e[v]['p_suc']:.2f} of the "
                           f"images (expected near 1): gradient masking or too few iterations?")
    for k, e in done.items():
        if e.get("zero_grad_rate", 0.0) > ZERO_GRAD_MAX:
            out.append(f"{k}: the input gradient is exactly zero on {e['zero_grad_rate']:.0%} of the images: "
                       "gradient masking (use BPDA for non-differentiable defenses)")
    return out


def _p_at(stats: dict, grid: list[float]) -> list[float]:
    """P(D) at the distortions of ``grid`` from an entry's per-sample distortions (eq. 3.2)."""
    l2 = torch.tensor([float("inf") if d is None else d for d in stats["per_sample"]["l2"]], dtype=torch.float64)
    return operating_characteristic(torch.isfinite(l2), l2, torch.tensor(grid)).tolist()
