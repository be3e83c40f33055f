"""Outputs of a transfer evaluation: transfer.md (one source x target table per attack, the white-box
cell marked *) and transfer.png (one heatmap per attack)."""
from __future__ import annotations

from pathlib import Path


def _pm(cell: dict, digits: int = 1) -> str:
    if cell is None:
        return "-"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}" if len(cell["runs"]) > 1 \
        else f"{cell['mean']:.{digits}f}"


def write_transfer_report(results: dict, path: str | Path) -> None:
    c, summary = results["context"], results["summary"]
    targets = list(c["targets"])
    lines = ["# Transfer evaluation", "",
             f"- metric: {c['metric']}; mean ± std over seeds {c['seeds']}",
             f"- test images N' = {c['n_prime']}, classified correctly by every model N = {c['n']}",
             f"- crafted images {'8-bit quantized' if c['quantize'] else 'real-valued'}; "
             "`*` = white-box cell (the target has the source's weights)",
             "- CPU time per image vs floor: the attack's gradient count x one forward+backward of the source", ""]
    for label, rows in summary.items():
        lines += [f"## {label}", "",
                  "| source \\ target | " + " | ".join(targets) + " | avg transfer | L2 | Linf | SSIM | grads "
                  "| CPU time/img (ms) | floor (ms) |",
                  "| --- |" + " ---: |" * (len(targets) + 7)]
        for src, row in rows.items():
            cells = [_pm(row["targets"][t]) + ("*" if row["targets"][t]["white_box"] else "") for t in targets]
            avg = "-" if row["avg_transfer"] is None else f"{row['avg_transfer']:.1f}"
            floor = "-" if row["floor_per_image_s"] is None else f"{1e3 * row['floor_per_image_s']:.2f}"
            lines.append(f"| {src} | " + " | ".join(cells) + f" | {avg} | {_pm(row['l2'], 3)} | "
                         f"{_pm(row['linf'], 3)} | {_pm(row['ssim'], 3)} | {row['grads']['mean']:.0f} | "
                         f"{1e3 * row['time_per_image_s']['mean']:.2f} | {floor} |")
        lines.append("")
    Path(path).write_text("\n".join(lines) + "\n")


def plot_transfer(results: dict, path: str | Path) -> None:
    """transfer.png: per attack a sources x targets heatmap of mean success (%), white-box cells starred."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    targets = list(results["context"]["targets"])
    labels = [k for k, rows in summary.items() if rows]
    if not labels:
        return
    n_src = max(len(summary[k]) for k in labels)
    cols = min(4, len(labels))
    rows_n = -(-len(labels) // cols)
    size = (max(3.0, 0.7 * len(targets) + 1.5) * cols, max(2.5, 0.5 * n_src + 1.8) * rows_n)
    fig, axes = plt.subplots(rows_n, cols, figsize=size, squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        rows = summary[label]
        mat = [[rows[s]["targets"][t]["mean"] for t in targets] for s in rows]
        im = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis")
        for i, s in enumerate(rows):
            for j, t in enumerate(targets):
                cell = rows[s]["targets"][t]
                ax.text(j, i, f"{cell['mean']:.0f}{'*' if cell['white_box'] else ''}", ha="center", va="center",
                        color="white" if cell["mean"] < 60 else "black", fontsize=8)
        ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("target")
    for ax in axes[:, 0]:
        ax.set_ylabel("source")
    fig.colorbar(im, ax=axes.flat[:len(labels)], shrink=0.8, label="success (%)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
