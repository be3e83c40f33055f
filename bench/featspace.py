"""Feature-space attacks on MNIST C4 (FEATURE_ATTACKS.md 1.6, 2.5): D2B and FSA next to I-FGSM/PGD.

For the trained C4 (tests' recipe, .cache/tests) and the Madry C4 (Madry's Linf PGD-40 recipe, 12 epochs:
bench/train_madry.py --model c4 --epochs 12, or --pgd-model for another PGD-trained C4),
on the first ``--n`` test images each model classifies correctly: success rate and, over the
successful images, L2, Linf, SSIM, PSNR and the feature distance (MNIST encoder) of D2B at several
quantiles, FSA at several bounds, I-FGSM and PGD-Linf at several eps; each attack's time over its
forward+backward floor (1 thread: as many plain passes as gradients it used -- the classifier's for
D2B/I-FGSM/PGD, decoder+classifier+encoder for FSA; attack and floor timed back to back, median ratio
of ``--repeats``, as bench/attacks.py); the fitting times of the
statistics and the decoder's reconstruction accuracy; writes bench/out/featspace.{json,md},
bench/out/featspace_ssim.png and docs/featspace_examples.png.

    OMP_NUM_THREADS=1 python bench/featspace.py --encoder runs/featspace/mnist_encoder.safetensors \
        --decoder runs/featspace/mnist_decoder.safetensors [--n 64] [--repeats 3] [--pgd-model PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from advtrain.attacks import build_attack  # noqa: E402
from advtrain.attacks.base import AttackResult  # noqa: E402
from advtrain.nn.state import frozen_eval  # noqa: E402
from advtrain.data import build_datamodule  # noqa: E402
from advtrain.evaluation.perceptual import perceptual  # noqa: E402
from advtrain.featspace.decoder import Decoder  # noqa: E402
from advtrain.featspace.encoder import Encoder  # noqa: E402
from advtrain.featspace.stats import fit_activation_stats  # noqa: E402
from advtrain.models import build_model  # noqa: E402
from advtrain.ops.norms import l2_norm, linf_norm  # noqa: E402
from advtrain.training.plain_loop import madry_recipe  # noqa: E402
from bench.attacks import median_ratio, plain_passes  # noqa: E402

OUT = ROOT / "bench" / "out"
C4 = ROOT / ".cache" / "tests" / "c4-adam1e-3-bs64-ep6-seed0-v1.pt"
MADRY_C4 = ROOT / ".cache" / "models" / f"{madry_recipe('c4', 12).key()}.pt"


def attacks(style: dict) -> dict[str, tuple[str, dict]]:
    rows = {f"D2B-{int(q * 100)}": ("d2b", {"quantile": q, "steps": 100}) for q in (0.1, 0.3, 0.5)}
    rows |= {f"FSA-{b}": ("fsa", {"bound": b, "steps": 60, **style}) for b in (1.5, 2.0)}
    rows |= {f"I-FGSM {e}": ("ifgsm", {"eps": e, "steps": 20, "alpha": e / 8, "early_stop": True})
             for e in (0.05, 0.1, 0.2, 0.3)}
    rows |= {f"PGD {e}": ("pgd_linf", {"eps": e, "steps": 20}) for e in (0.1, 0.2, 0.3)}
    # the strongest installed peer for the pixel rows, same settings (random start, alpha 2.5 eps / steps)
    rows |= {f"torchattacks PGD {e}": ("peer:pgd", {"eps": e, "steps": 20}) for e in (0.1, 0.2, 0.3)}
    return rows


def load_c4(path: Path) -> nn.Module:
    m = build_model("c4")
    m.load_state_dict(torch.load(path, weights_only=True))
    return m.eval()


def peer_attack(model: nn.Module, eps: float, steps: int):
    """torchattacks' PGD as an attack returning an :class:`AttackResult` (success measured here)."""
    import torchattacks

    pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)

    def run(model_: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        x_adv = pgd(x, y)
        with torch.no_grad():
            success = model_(x_adv).argmax(1) != y
        return AttackResult(x_adv, success, l2_norm(x_adv - x), linf_norm(x_adv - x), grads=steps)
    return run


def style_passes(model: nn.Module, enc: Encoder, dec: Decoder, x: Tensor, y: Tensor, n: int):
    """FSA's floor: ``n`` passes decoder -> classifier + encoder and back to the style statistics."""
    with torch.no_grad():
        b = enc(x)

    def run():
        with frozen_eval(model):  # the encoder and decoder hold frozen, eval-mode networks
            for _ in range(n):
                t = b.detach().requires_grad_(True)
                x_r = dec(t)
                loss = nn.functional.cross_entropy(model(x_r), y) + ((enc(x_r) - t) ** 2).mean()
                torch.autograd.grad(loss, t)
    return run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", required=True)
    p.add_argument("--decoder", required=True)
    p.add_argument("--pgd-model", default=str(MADRY_C4), help="the PGD-trained C4 (default: the Madry C4)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median ratio)")
    args = p.parse_args()
    torch.set_num_threads(1)
    enc = Encoder.load(args.encoder)
    dec = Decoder.load(args.decoder, enc)
    style = {"encoder": args.encoder, "decoder": args.decoder}
    dm = build_datamodule("mnist_embedded", batch_size=256, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(len(dm.test_set))])
    x_test, y_test = torch.stack(xs), torch.tensor(ys)
    report: dict = {"n": args.n, "models": {}}
    examples: dict[str, Tensor] = {}
    for mname, path in (("C4", C4), ("Madry C4" if Path(args.pgd_model) == MADRY_C4 else "PGD-trained C4",
                                      Path(args.pgd_model))):
        if not path.is_file():
            raise SystemExit(f"no model {path} (train it: bench/train_madry.py --model c4 --epochs 12)")
        model = load_c4(path)
        with torch.no_grad():
            pred = model(x_test).argmax(1)
            rec_pred = model(dec(enc(x_test))).argmax(1)
        entry: dict = {"clean_acc": float((pred == y_test).float().mean()),
                       "decoded_acc": float((rec_pred == y_test).float().mean())}
        keep = (pred == y_test).nonzero().flatten()[: args.n]
        x, y = x_test[keep], y_test[keep]
        t = time.process_time()
        stats = fit_activation_stats(model, dm.train_dataloader(), progress=False)
        entry["stats_fit_cpu_s"] = time.process_time() - t
        rows = {}
        for label, (name, opts) in attacks(style).items():
            if name == "d2b":
                opts = {**opts, "stats": stats}
            attack = peer_attack(model, **opts) if name.startswith("peer:") else build_attack(name, **opts)
            torch.manual_seed(0)
            res = attack(model, x, y)
            floor = (style_passes(model, enc, dec, x, y, res.grads) if name == "fsa"
                     else plain_passes(model, x, y, res.grads))
            elapsed, over_floor = median_ratio(lambda: attack(model, x, y), floor, args.repeats)
            s = res.success
            per = perceptual(x, res.x_adv, enc)
            mean = (lambda v: float(v[s].double().mean()) if bool(s.any()) else None)
            rows[label] = {"success": float(s.float().mean()), "l2": mean(res.l2), "linf": mean(res.linf),
                           "ssim": mean(per["ssim"]), "psnr": mean(per["psnr"]), "feature": mean(per["feature"]),
                           "grads": res.grads, "seconds": elapsed, "over_floor": over_floor,
                           "per_sample_ssim": [float(v) if ok else None for v, ok in zip(per["ssim"], s)]}
            print(f"{mname:16s} {label:12s} success {rows[label]['success']:.2f} "
                  f"SSIM {rows[label]['ssim'] or float('nan'):.3f} L2 {rows[label]['l2'] or float('nan'):.2f} "
                  f"Linf {rows[label]['linf'] or float('nan'):.3f} x floor {rows[label]['over_floor']:.2f}", flush=True)
            if mname == "C4" and label in ("D2B-30", "FSA-1.5", "PGD 0.2"):
                examples[label] = res.x_adv[:6]
        entry["attacks"] = rows
        report["models"][mname] = entry
        if mname == "C4":
            examples["clean"] = x[:6]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "featspace.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, OUT / "featspace.md")
    plot_ssim(report, OUT / "featspace_ssim.png")
    plot_examples(examples, ROOT / "docs" / "featspace_examples.png")
    print((OUT / "featspace.md").read_text())


def write_markdown(report: dict, path: Path) -> None:
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = []
    for mname, e in report["models"].items():
        lines += [f"## {mname}: clean accuracy {e['clean_acc']:.3f}, on decoded test images {e['decoded_acc']:.3f}; "
                  f"statistics fit {e['stats_fit_cpu_s']:.1f} s CPU", "",
                  "| attack | success | SSIM | PSNR | L2 | Linf | feature distance (MNIST encoder) | grads | s | x floor |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, r in e["attacks"].items():
            lines.append(f"| {label} | {r['success']:.2f} | {f(r['ssim'])} | {f(r['psnr'], 1)} | {f(r['l2'], 2)} | "
                         f"{f(r['linf'])} | {f(r['feature'], 2)} | {r['grads']} | {r['seconds']:.1f} | {r['over_floor']:.2f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot_ssim(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["models"]), figsize=(6 * len(report["models"]), 4.5), squeeze=False)
    for ax, (mname, e) in zip(axes[0], report["models"].items()):
        for family, marker in (("D2B", "o-"), ("FSA", "s-"), ("I-FGSM", "^--"), ("PGD", "v:")):
            pts = [(r["ssim"], r["success"]) for k, r in e["attacks"].items() if k.startswith(family) and r["ssim"]]
            if pts:
                ax.plot(*zip(*pts), marker, label=family)
        ax.set(xlabel="mean SSIM of successful images", ylabel="success rate", title=mname, xlim=(1, 0), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_examples(examples: dict[str, Tensor], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["clean", "D2B-30", "FSA-1.5", "PGD 0.2"]
    rows = len(examples["clean"])
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.3 * len(cols), 1.3 * rows), squeeze=False)
    for c, label in enumerate(cols):
        for r in range(rows):
            axes[r, c].imshow(examples[label][r, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[0, c].set_title(label, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)


if __name__ == "__main__":
    main()
