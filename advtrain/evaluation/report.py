"""Outputs of an evaluation: report.md (the table), curves.png (operating characteristics, thesis
Fig. 5.4 style), examples.png (clean / adversarial / perturbation of the easiest and hardest images), wandb."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..defenses.eot import describe_draws
from .perceptual import UNRESTRICTED, plot_ssim_curves, report_lines

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


def trust_banner(results: dict) -> list[str]:
    """The report's opening lines when a sanity check failed: a "not trustworthy" banner naming the
    failed checks (``results["failed_checks"]``, or recomputed from the attacks); none otherwise."""
    from .sanity import failed_checks

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
    """report.md: a "not trustworthy" banner when a sanity check failed, the context, one table per
    quantization variant (thesis Table 5.2 columns), the sanity checks' details."""
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
    lines += [f"- D_upp = {d_upp} (P_upp = P(D_upp)); distortions are L2 in [0, 1] pixel units", ""]
    for v in variants_of(results):
        lines += [f"## {VARIANT_TITLE[v]}", "",
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


def plot_curves(results: dict, path: str | Path) -> None:
    """curves.png: P(D) per attack (and the suite's worst case), one panel per quantization variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = variants_of(results)
    ssim_panel = any(e.get("family") == UNRESTRICTED for e in results["attacks"].values())
    fig, axes = plt.subplots(1, len(variants) + ssim_panel, figsize=(6 * (len(variants) + ssim_panel), 4.5),
                             squeeze=False)
    if ssim_panel:  # success vs SSIM, the unrestricted family's curve (on the last variant)
        plot_ssim_curves(axes[0, -1], results, variants[-1])
    d_upp = results["context"]["d_upp"]
    for ax, v in zip(axes[0], variants):
        curves = {k: e[v]["curve"] for k, e in results["attacks"].items()
                  if e.get("status") == "done" and e.get("family") != UNRESTRICTED}
        if v in results.get("worst_case", {}):
            curves["worst case"] = results["worst_case"][v]["curve"]
        d_end = max([max(c["d"]) for c in curves.values()] + [d_upp])
        for label, c in curves.items():
            d, p = list(c["d"]) + [d_end], list(c["p"]) + [c["p"][-1]]  # flat after D_max
            ax.plot(d, p, label=label, lw=2.5 if label == "worst case" else 1.5,
                    ls="--" if label == "worst case" else "-")
        ax.axvline(d_upp, color="gray", lw=0.8, ls=":")
        ax.set(xlabel="distortion D (L2)", ylabel="P(D)", title=VARIANT_TITLE[v], ylim=(0, 1.02), xlim=(0, d_end))
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

    from .magnify import magnify

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
    run.log({"robustness": table, "curves": wandb.Image(str(Path(out_dir) / "curves.png"))})
    for v in variants_of(results):
        for k, e in results["attacks"].items():
            if e.get("status") == "done":
                data = [[d, p] for d, p in zip(e[v]["curve"]["d"], e[v]["curve"]["p"])]
                run.log({f"P(D)/{v}/{k}": wandb.plot.line(wandb.Table(data=data, columns=["D", "P"]), "D", "P",
                                                           title=f"P(D) {k} ({v})")})
    run.finish()
