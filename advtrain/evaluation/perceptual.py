"""The "unrestricted" family's report (FEATURE_ATTACKS.md sections 0 and 5): attacks without an Lp
budget (D2B, FSA) are reported by success rate plus distortion and perceptual statistics of their
successful images -- L2, Linf, SSIM and PSNR (torchmetrics, data_range 1) and the normalized
feature distance of the style encoder, ||h(x') - h(x)||_2 with h = (f - mu_c) / sigma_c (Xu et al.
App. A.1) -- never by P(D) at budgets. LPIPS is not offered (its backbones need a download).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..featspace.encoder import Encoder

UNRESTRICTED = "unrestricted"
FEATURE_DISTANCE = "feature distance (MNIST encoder)"
METRICS = ("l2", "linf", "ssim", "psnr", "feature")
TITLES = {"l2": "mean L2", "linf": "mean Linf", "ssim": "SSIM", "psnr": "PSNR (dB)", "feature": FEATURE_DISTANCE}


def perceptual(x: Tensor, x_adv: Tensor, encoder: Any = None) -> dict[str, Tensor]:
    """Per-sample SSIM, PSNR and (with an encoder) feature distance of ``x_adv`` against ``x``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x, x_adv = x.float(), x_adv.float()
    out = {"ssim": structural_similarity_index_measure(x_adv, x, data_range=1.0, reduction="none").cpu(),
           "psnr": peak_signal_noise_ratio(x_adv, x, data_range=1.0, reduction="none", dim=(1, 2, 3)).cpu()}
    if encoder is not None:
        with torch.no_grad():
            enc = encoder.to(x.device)
            out["feature"] = (enc.normalized(x_adv) - enc.normalized(x)).flatten(1).norm(dim=1).cpu()
    return out


def summarize_perceptual(found: Tensor, per_sample: dict[str, Tensor]) -> dict[str, float | None]:
    """Means over the successful images (None when there is none or the metric is absent)."""
    out: dict[str, float | None] = {}
    for k in METRICS:
        v = per_sample.get(k)
        out[k] = float(v.double()[found].mean()) if v is not None and bool(found.any()) else None
    return out


def encoder_of(specs: list) -> Any:
    """The style encoder of the suite's first entry naming one (for the feature distance), or None."""
    for s in specs:
        path = s.options.get("encoder")
        if isinstance(path, str):
            return Encoder.load(path)
    return None


def _f(v: Any, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report_lines(results: dict, variant: str) -> list[str]:
    """The markdown table of the unrestricted attacks for ``variant`` (empty when there is none)."""
    done = {k: e for k, e in results["attacks"].items()
            if e.get("family") == UNRESTRICTED and e.get("status") == "done"}
    if not done:
        return []
    lines = ["### Unrestricted attacks (no Lp budget; means over successful images)", "",
             "| attack | # grads | success | " + " | ".join(TITLES[k] for k in METRICS) + " | time (s) |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in METRICS) + " | ---: |"]
    for label, e in done.items():
        s, p = e[variant], e[variant].get("perceptual", {})
        vals = {"l2": s.get("d_bar"), "linf": s.get("linf_mean"), **{k: p.get(k) for k in ("ssim", "psnr", "feature")}}
        lines.append(f"| {label} | {_f(e.get('grads'), 1)} | {_f(s['p_suc'], 2)} | " + " | ".join(
            _f(vals[k], 3 if k in ("linf", "ssim") else 2) for k in METRICS) + f" | {_f(e.get('time_s'), 1)} |")
    return lines + [""]


def plot_ssim_curves(ax: Any, results: dict, variant: str) -> None:
    """Success vs SSIM: per attack, the fraction of images with a successful adversarial of SSIM >= s."""
    n = max(results["context"].get("n") or 1, 1)
    for label, e in results["attacks"].items():
        if e.get("status") != "done" or "ssim" not in e[variant].get("per_sample", {}):
            continue
        ssim = sorted((v for v in e[variant]["per_sample"]["ssim"] if v is not None), reverse=True)
        if not ssim:
            continue
        xs = [1.0] + [v for v in ssim for _ in (0, 1)] + [0.0]
        ys = [0.0] + [c for i in range(len(ssim)) for c in (i / n, (i + 1) / n)] + [len(ssim) / n]
        ax.plot(xs, ys, label=label, ls="-" if e.get("family") == UNRESTRICTED else ":")
    ax.set(xlabel="SSIM (higher: less visible)", ylabel="success rate with SSIM >= s", xlim=(1.0, 0.0),
           ylim=(0, 1.02), title=f"success vs SSIM ({variant})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
