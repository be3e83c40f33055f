"""Outputs of an evaluation: report.md (the table), curves.png (operating characteristics, thesis
Fig. 5.4 style), examples.png (clean / adversarial / perturbation of the easiest and hardest images), wandb."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..defenses.eot import describe_draws
from .perceptual import UNRESTRICTED, plot_ssim_curves, report_lines
from .magnify import magnify
from .sanity import failed_checks
from .threats import NORM_TITLE

VARIANT_TITLE = {"quantized": "with 8-bit quantization", "unquantized": "without quantization"}


def _fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table_rows(results: dict, variant: str) -> list[dict]:
    """One row per attack (and the worst case) for ``variant``: the numbers of report.md / wandb."""
    rows = []
    for label, e in results["attacks"].items():
        if e.get("family") == UNRESTRICTED and e.get("status") == "done":
            continue  # reported by success and perceptual statistics (perceptual.report_lines)
        if e.get("status") != "done":
            rows.append({"attack": label, "error": e.get("error")})
            continue
        s = e[variant]
        rows.append({"attack": label, "grads": e["grads"], "p_suc": s["p_suc"], "d_bar": s["d_bar"],
                     "d_median": s["d_median"], "p_upp": s["p_upp"], "linf_mean": s["linf_mean"],
                     "zero_grad_rate": e["zero_grad_rate"], "time_s": e.get("time_s")})
    wc = results.get("worst_case", {}).get(variant)
    if wc:
        rows.append({"attack": "worst case (suite)", "p_suc": wc["p_suc"], "d_bar": wc["d_bar"],
                     "d_median": wc["d_median"], "p_upp": wc["p_upp"]})
    return rows


def variants_of(results: dict) -> list[str]:
    return [v for v in ("quantized", "unquantized") if v in results.get("worst_case", {})
            or any(v in e for e in results["attacks"].values())]


def _eps(eps: float) -> str:
    """A budget as readers write it: 8/255 for multiples of 1/255 below 1, else the number."""
    k = eps * 255
    return f"{round(k)}/255" if eps < 1 and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def headline_rows(results: dict) -> list[dict]:
    """One row per threat model and variant (``results["threat_models"]``): the numbers of the report's
    first table and of wandb's ``threat_models`` table."""
    rows = []
    for norm, tm in results.get("threat_models", {}).items():
        for v in variants_of(results):
            t = tm.get(v)
            if t is None:
                continue
            cascade = {k for k, e in results["attacks"].items() if (e.get("key") or {}).get("cascade")}
            broke = ", ".join(f"{k}{'*' if k in cascade else ''} {n}" for k, n in t["first_broken_by"].items() if n)
            rows.append({"threat": norm, "budget": tm["budget"], "variant": v,
                         "clean_accuracy": results["context"].get("accuracy"),
                         "robust_accuracy": t["robust_accuracy"], "d_bar": t["d_bar"], "d_median": t["d_median"],
                         "p_suc": t["p_suc"], "broken": t["broken_at_budget"], "first_broken_by": broke or "none"})
    return rows


def headline_lines(results: dict) -> list[str]:
    """The report's first table (RobustBench's numbers): clean accuracy, robust accuracy at the standard
    budget per threat model, the worst-case mean distortion per norm, the attacks that broke the images."""
    rows = headline_rows(results)
    if not rows:
        return []
    n = results["context"].get("n_prime")
    lines = ["| threat model | budget | images | clean accuracy | robust accuracy | worst-case D-bar | median D | "
             "broken within the budget, first by |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        ra = "not measured" if r["robust_accuracy"] is None else f"{r['robust_accuracy']:.3f}"
        lines.append(f"| {NORM_TITLE[r['threat']]} | {_eps(r['budget'])} | {r['variant']} | "
                     f"{_fmt(r['clean_accuracy'], 3)} | **{ra}** | {_fmt(r['d_bar'], 3)} | {_fmt(r['d_median'], 3)} | "
                     f"{r['broken']}: {r['first_broken_by']} |")
    lines += ["", f"Robust accuracy: the fraction of all N' = {n} images classified correctly and not broken "
              "within the budget by any attack of that norm (clean errors count as broken, RobustBench's "
              "convention). D-bar: the mean over the broken images of the least distortion in that norm "
              "over that norm's attacks. \* a cascaded attack (AutoAttack's): it ran only on the images the "
              "earlier attacks of its norm left unbroken within its budget; its own P_suc is on those images."]
    if any(r["robust_accuracy"] is None for r in rows):
        lines.append("\"not measured\": no attack of that norm ran at the budget or above and none minimizes "
                     "the norm, so the attacks say nothing about it.")
    return lines + [""]


def threat_lines(results: dict, variant: str) -> list[str]:
    """Per threat model, each of its attacks in its own norm: the images it ran on, P_suc there,
    D-bar, P(budget), gradients and time."""
    lines = []
    for norm, tm in results.get("threat_models", {}).items():
        t = tm.get(variant)
        if t is None:
            continue
        lines += [f"### {NORM_TITLE[norm]} attacks ({variant}; distortions in {NORM_TITLE[norm]}, budget "
                  f"{_eps(tm['budget'])})", "",
                  f"| attack | images run | P_suc | D-bar | P(D <= {_eps(tm['budget'])}) | least D on | # grads | time (s) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for k, a in t["per_attack"].items():
            lines.append(f"| {k} | {a['n_ran']} | {_fmt(a['p_suc'], 3)} | {_fmt(a['d_bar'], 3)} | "
                         f"{_fmt(a['p_budget'], 3)} | {t['by_attack'].get(k, 0)} | {_fmt(a.get('grads'), 1)} | "
                         f"{_fmt(a.get('time_s'), 1)} |")
        lines.append(f"| **worst case ({NORM_TITLE[norm]})** | {t['n']} | {_fmt(t['p_suc'], 3)} | {_fmt(t['d_bar'], 3)} | "
                     f"{_fmt(t['p_upp'], 3)} | | | |")
        lines.append("")
    return lines


def trust_banner(results: dict) -> list[str]:
    """The report's opening lines when a sanity check failed: a "not trustworthy" banner naming the
    failed checks (``results["failed_checks"]``, or recomputed from the attacks); none otherwise."""
    checks = results.get("failed_checks")
    if checks is None:
        checks = failed_checks(results)
    if not checks:
        return []
    return ["> [!CAUTION]",
            f"> **NOT TRUSTWORTHY: {'; '.join(checks)}.** The sanity checks against gradient masking "
            "failed, so the numbers below may overstate the model's robustness (attacks too weak or "
            "misled by the gradients). Details under \"Sanity checks\" at the end; evaluate with "
            "stronger attacks (`--suite reliable`) before trusting them.", ""]


def write_report(results: dict, path: str | Path) -> None:
    """report.md: a "not trustworthy" banner when a sanity check failed, the context, the threat
    models' table (``headline_lines``), per quantization variant each threat model's attacks in their
    norm and the thesis table (every attack in L2, Table 5.2 columns), the sanity checks' details."""
    c = results["context"]
    d_upp = c["d_upp"]
    lines = ["# Robustness evaluation", ""] + trust_banner(results)
    for key in ("checkpoint", "model", "dataset"):
        if key in c:
            lines.append(f"- {key}: `{c[key]}`")
    lines.append(f"- test images N' = {c['n_prime']}, correctly classified N = {c.get('n')} "
                 f"(accuracy {_fmt(c.get('accuracy'), 4)})")
    if c.get("defenses"):
        lines.append(f"- defenses: {', '.join(c['defenses'])}; attacks see: **{c['view']}**")
        lines.append(f"- attacked through BPDA (identity backward): {', '.join(c['bpda_approximated']) or 'none'}")
    if c.get("randomness"):
        lines.append(describe_draws(c["randomness"]))
    lines += [""] + headline_lines(results)
    for v in variants_of(results):
        lines += [f"## {VARIANT_TITLE[v]}", ""] + threat_lines(results, v)
        lines += ["### Every attack in L2 (thesis Table 5.2)", "",
                  f"D_upp = {d_upp} (P_upp = P(D_upp)); distortions are L2 in [0, 1] pixel units, whatever norm "
                  "an attack bounds; mean Linf: the mean least Linf distortion of its adversarials. "
                  "The worst case is over every attack.", "",
                  "| attack | # grads | P_suc | D-bar | median D | P_upp | mean Linf | zero-grad | time (s) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in table_rows(results, v):
            if "error" in r:
                lines.append(f"| {r['attack']} | crashed: {r['error']} |||||||| ")
                continue
            lines.append(f"| {r['attack']} | {_fmt(r.get('grads'), 1)} | {_fmt(r['p_suc'])} | {_fmt(r['d_bar'])} | "
                         f"{_fmt(r['d_median'])} | {_fmt(r['p_upp'])} | {_fmt(r.get('linf_mean'), 3)} | "
                         f"{_fmt(r.get('zero_grad_rate'))} | {_fmt(r.get('time_s'), 1)} |")
        lines.append("")
        lines += report_lines(results, v)
    warns = results.get("warnings") or []
    lines += ["## Sanity checks (gradient masking)", ""] + ([f"- WARNING: {w}" for w in warns] or ["- all passed"])
    Path(path).write_text("\n".join(lines) + "\n")


def _curve_panels(results: dict, v: str) -> list[tuple[str, float, dict]]:
    """Per threat model (else the thesis' L2 view of every attack): its name, budget (or D_upp) and the
    curves P(D) of its attacks and worst case in variant ``v``."""
    panels = []
    for norm, tm in results.get("threat_models", {}).items():
        t = tm.get(v)
        if t is not None:
            curves = {k: a["curve"] for k, a in t["per_attack"].items()}
            panels.append((norm, tm["budget"], {**curves, "worst case": t["curve"]}))
    if panels:
        return panels
    curves = {k: e[v]["curve"] for k, e in results["attacks"].items()
              if e.get("status") == "done" and e.get("family") != UNRESTRICTED and v in e}
    if v in results.get("worst_case", {}):
        curves["worst case"] = results["worst_case"][v]["curve"]
    return [("l2", results["context"]["d_upp"], curves)]


def plot_curves(results: dict, path: str | Path) -> None:
    """curves.png: P(D) per attack and the worst case, one panel per threat model (in its norm, the
    budget dotted) and quantization variant (rows); the unrestricted attacks' SSIM panel beside."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = variants_of(results)
    panels = {v: _curve_panels(results, v) for v in variants}
    cols = max(len(p) for p in panels.values())
    ssim_panel = any(e.get("family") == UNRESTRICTED for e in results["attacks"].values())
    fig, axes = plt.subplots(len(variants), cols + ssim_panel, figsize=(6 * (cols + ssim_panel), 4.5 * len(variants)),
                             squeeze=False)
    if ssim_panel:  # success vs SSIM, the unrestricted family's curve (on the last variant)
        plot_ssim_curves(axes[-1, -1], results, variants[-1])
    for row, v in zip(axes, variants):
        for ax in row[len(panels[v]):cols]:
            ax.axis("off")
        for ax, (norm, budget, curves) in zip(row, panels[v]):
            d_end = max([max(c["d"]) for c in curves.values()] + [budget])
            for label, c in curves.items():
                d, p = list(c["d"]) + [d_end], list(c["p"]) + [c["p"][-1]]  # flat after D_max
                ax.plot(d, p, label=label, lw=2.5 if label == "worst case" else 1.5,
                        ls="--" if label == "worst case" else "-")
            ax.axvline(budget, color="gray", lw=0.8, ls=":")
            ax.set(xlabel=f"distortion D ({NORM_TITLE[norm]})", ylabel="P(D)",
                   title=f"{NORM_TITLE[norm]}, {VARIANT_TITLE[v]}", ylim=(0, 1.02), xlim=(0, d_end))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def perturbation_panel(delta: Tensor) -> tuple[Tensor, str]:
    """The perturbation ``delta`` [C, H, W] shown as 0.5 + k delta with k = 0.5 / max |delta| (mid-grey
    is no change; only the largest change reaches black or white), with its title naming k; a zero
    perturbation is plain mid-grey."""
    peak = float(delta.abs().max()) if delta.numel() else 0.0
    if peak == 0.0:
        return torch.full_like(delta, 0.5), "zero perturbation"
    k = 0.5 / peak
    return (0.5 + k * delta).clamp(0, 1), f"perturbation x{k:.3g}"


def plot_examples(rows: list[dict], path: str | Path) -> None:
    """examples.png: one row per image (``examples.Adversarials.rows``: the easiest, the hardest and
    unbroken images); columns: the clean image with its true label, the adversarial with the model's
    prediction on it and its L2, the perturbation magnified by a factor it names, and the adversarial
    magnification of thesis 4.5 (eq. 4.16)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(max(len(rows), 1), 4, figsize=(8, 2.1 * max(len(rows), 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        x = row["x"].float()
        panels = [(x, f"{row.get('kind', '')} #{row['index']}\ntrue {row.get('label', '?')}")]
        if row.get("x_adv") is None:
            panels.append((None, "not broken\nby any attack"))
        else:
            x_adv = row["x_adv"].float()
            panels += [(x_adv, f"{row['attack']}: pred {row.get('pred', '?')}\nL2 = {row['l2']:.3g}"),
                       perturbation_panel(x_adv - x),
                       (magnify(x[None], x_adv[None])[0], "magnified (eq. 4.16)")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.set_title(title, fontsize=8)
            if img is None:
                continue
            arr = img.permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_wandb(results: dict, out_dir: str | Path, project: str = "advtrain-eval") -> None:
    """The table (one row per attack and variant) and the curves to wandb (offline unless
    WANDB_MODE says otherwise)."""
    import os

    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project=project, dir=str(out_dir), config=results["context"] | {"indices": None},
                     job_type="evaluation")
    cols = ["variant", "attack", "grads", "p_suc", "d_bar", "d_median", "p_upp", "linf_mean", "time_s"]
    table = wandb.Table(columns=cols)
    for v in variants_of(results):
        for r in table_rows(results, v):
            table.add_data(v, *[r.get(k) for k in cols[1:]])
    heads = ["threat", "budget", "variant", "clean_accuracy", "robust_accuracy", "d_bar", "d_median", "p_suc",
             "broken", "first_broken_by"]
    headline = wandb.Table(columns=heads)
    for r in headline_rows(results):
        headline.add_data(*[r.get(k) for k in heads])
    run.log({"robustness": table, "threat_models": headline, "curves": wandb.Image(str(Path(out_dir) / "curves.png"))})
    for v in variants_of(results):
        for norm, _, curves in _curve_panels(results, v):
            for k, c in curves.items():
                data = [[d, p] for d, p in zip(c["d"], c["p"])]
                run.log({f"P(D)/{norm}/{v}/{k}": wandb.plot.line(wandb.Table(data=data, columns=["D", "P"]), "D", "P",
                                                                  title=f"P(D) {k} ({NORM_TITLE[norm]}, {v})")})
    run.finish()
