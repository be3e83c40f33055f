"""Sanity checks against gradient masking (Athalye et al. 2018; thesis 6.6; Carlini et al. 2019's
checklist). Each failed check is a :class:`Finding` naming the check; ``report.md`` opens with a
"not trustworthy" banner listing the failed checks.

Checks: iterative attacks beat single-step ones, success never drops with the budget, unbounded
attacks reach success near 1, a black-box (score-based, no gradients) attack never beats the
white-box ones, input gradients are not zero, and no attack crashed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.norms import within_budget
from .metrics import least_distortion, operating_characteristic, per_sample_distortion

TOL = 0.02           # slack on success rates (sampling noise on small test sets)
UNBOUNDED_MIN = 0.95  # an unbounded (success-targeted) attack should succeed at least this often
ZERO_GRAD_MAX = 0.05  # tolerated rate of exactly-zero input gradients

# the checks' names (as the banner of report.md lists them)
CRASH = "an attack crashed"
SINGLE_STEP = "an iterative attack is weaker than a single-step one"
BUDGET = "success falls as the budget grows"
UNBOUNDED = f"an unbounded attack succeeds below {UNBOUNDED_MIN}"
BLACK_BOX = "a black-box attack beats the white-box ones"
ZERO_GRAD = "zero input gradients"


@dataclass
class Finding:
    """One failed check: its name (one of the constants above) and the message about one attack."""

    check: str
    message: str


def sanity_checks(results: dict) -> list[Finding]:
    """Failed checks for the attacks in ``results["attacks"]`` (entries as written by ``run_suite``)."""
    out: list[Finding] = []
    attacks = results.get("attacks", {})
    for label, e in attacks.items():
        if e.get("status") == "error":
            out.append(Finding(CRASH, f"{label}: the attack crashed ({e.get('error')}); rerun to retry it"))
    done = {k: e for k, e in attacks.items() if e.get("status") == "done"}
    # on real-valued images: rounding alone can undo near-boundary adversarials, which is no masking
    variants = [v for v in ("unquantized", "quantized") if any(v in e for e in done.values())][:1]
    for v in variants:
        for norm in dict.fromkeys(norm_of(e) for e in done.values()):  # compared within a threat model only
            same = {k: e for k, e in done.items() if norm_of(e) == norm}
            out += _single_step_checks(same, v, norm) + _black_box_checks(same, v, norm)
        for k, e in done.items():
            if (e.get("key") or {}).get("cascade"):
                continue  # a cascade's budgets ran on different images: its rates are not comparable
            curve = [b["p_suc"] for b in e[v].get("p_suc_by_budget", [])]
            drops = [i for i in range(1, len(curve)) if curve[i] < curve[i - 1] - TOL]
            if drops:
                eps = e[v]["p_suc_by_budget"]
                out.append(Finding(BUDGET, f"{k} ({v}): success decreases with the budget (P_suc "
                                   f"{curve[drops[0] - 1]:.2f} at eps={eps[drops[0] - 1]['eps']:g} but "
                                   f"{curve[drops[0]]:.2f} at eps={eps[drops[0]]['eps']:g}): gradient masking?"))
            if e.get("family") == "success" and e[v]["p_suc"] < UNBOUNDED_MIN:
                out.append(Finding(UNBOUNDED, f"{k} ({v}): the unbounded attack succeeds only on "
                                   f"{e[v]['p_suc']:.2f} of the images (expected near 1): gradient masking "
                                   "or too few iterations?"))
    for k, e in done.items():
        if e.get("zero_grad_rate", 0.0) > ZERO_GRAD_MAX:
            out.append(Finding(ZERO_GRAD, f"{k}: the input gradient is exactly zero on {e['zero_grad_rate']:.0%} "
                               "of the images: gradient masking (use BPDA for non-differentiable defenses)"))
    return out


def sanity_warnings(results: dict) -> list[str]:
    """The messages of :func:`sanity_checks` (``results["warnings"]``)."""
    return [f.message for f in sanity_checks(results)]


def failed_checks(results: dict) -> list[str]:
    """The names of the failed checks, in order of first appearance (the report's banner)."""
    return check_names(sanity_checks(results))


def check_names(findings: list[Finding]) -> list[str]:
    """The checks of ``findings``, each once, in order of first appearance."""
    return list(dict.fromkeys(f.check for f in findings))


def norm_of(entry: dict) -> str:
    """The threat model of a results entry (entries without one are L2, the thesis' distortion)."""
    return entry.get("norm") or "l2"


def _single_step_checks(done: dict, v: str, norm: str) -> list[Finding]:
    out = []
    single = {k: e[v] for k, e in done.items() if e.get("grads_per_run") == 1}
    iterative = {k: e[v] for k, e in done.items() if (e.get("grads_per_run") or 0) > 1}
    for ki, it in iterative.items():
        # compare at equal distortion: D_upp and the iterative attack's own D_max
        grid = [it["d_upp"]] + ([it["d_max"]] if it["n_suc"] else [])
        for ks, s in single.items():
            p_it, p_s = _p_at(it, grid, norm), _p_at(s, grid, norm)
            worse = [d for d, a, b in zip(grid, p_it, p_s) if a < b - TOL]
            if worse or (it["p_suc"] <= TOL < s["p_suc"]):
                d = worse[0] if worse else it["d_upp"]
                out.append(Finding(SINGLE_STEP, f"{ki} ({v}): the iterative attack is weaker than single-step {ks} "
                                   f"(P_suc {it['p_suc']:.2f} vs {s['p_suc']:.2f}, P(D={d:.2f}) "
                                   f"{p_it[grid.index(d)]:.2f} vs {p_s[grid.index(d)]:.2f}): gradient masking?"))
    return out


def _black_box_checks(done: dict, v: str, norm: str) -> list[Finding]:
    """A black-box attack (``grads_per_run == 0``: no gradient computed, e.g. Square) must not find
    more adversarials at some distortion than the white-box attacks' per-image worst case (in the
    same norm): at D_upp and at each distortion the black-box attack reached; and at its budget it
    must not break more than TOL of the images the white-box attacks left unbroken within it
    (AutoAttack's check: Square lowering the robust accuracy after the gradient attacks)."""
    black = {k: e for k, e in done.items() if e.get("grads_per_run") == 0}
    white = [e[v] for e in done.values() if (e.get("grads_per_run") or 0) > 0]
    if not black or not white:
        return []
    runs = [per_sample_distortion(s, norm) for s in white]
    suc, dist = least_distortion(torch.stack([s for s, _ in runs]), torch.stack([d for _, d in runs]))
    out = []
    for kb, eb in black.items():
        b = eb[v]
        b_suc, b_dist = per_sample_distortion(b, norm)
        for eps in (eb.get("key") or {}).get("budgets") or []:
            only = b_suc & within_budget(b_dist, eps) & ~(suc & within_budget(dist, eps))
            if int(only.sum()) > TOL * len(only):
                out.append(Finding(BLACK_BOX, f"{kb} ({v}): the black-box attack breaks {int(only.sum())} of "
                                   f"{len(only)} images within eps={eps:g} ({norm}) that the white-box attacks "
                                   "left unbroken: the gradients mislead (gradient masking)"))
        grid = sorted({b["d_upp"], *b_dist[b_suc].tolist()})
        d = torch.tensor(grid, dtype=torch.float64)
        p_b = operating_characteristic(b_suc, b_dist, d).tolist()
        p_w = operating_characteristic(suc, dist, d).tolist()
        worse = [i for i in range(len(grid)) if p_w[i] < p_b[i] - TOL]
        if worse:
            i = worse[0]
            out.append(Finding(BLACK_BOX, f"{kb} ({v}): the black-box attack beats the white-box attacks' worst "
                               f"case (P(D={grid[i]:.2f}) {p_b[i]:.2f} vs {p_w[i]:.2f}): the gradients mislead "
                               "(gradient masking)"))
    return out


def _p_at(stats: dict, grid: list[float], norm: str = "l2") -> list[float]:
    """P(D) at the distortions of ``grid`` from an entry's per-sample distortions (eq. 3.2)."""
    success, l2 = per_sample_distortion(stats, norm)
    return operating_characteristic(success, l2, torch.tensor(grid, dtype=torch.float64)).tolist()
