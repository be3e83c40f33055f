"""BP-20's variants side by side (issue 11: which is the default), quantized, with DDN for reference.

Per model: P_suc, D-bar, P(D <= 2) and CPU seconds (1 thread) of BP-20 ``thesis`` (Alg. 1-2 exactly)
and ``sphere`` (case OUT steps to the sphere's point nearest the plane when it misses it), BP-100
``sphere`` and DDN-20/100 (rounding every iterate), and DDN-100 rounded once afterwards (the
per-step rounding question). Models: the tests' clean C4 (``c4``), the two EfficientNet-Lite
ImageNet models on foolbox's 20 images (``imagenet``), a Madry-trained net from ``.cache/models``
(``madry:c4:12`` = ``madry_recipe("c4", 12)``; ``--lr`` for other learning rates).

    .venv/bin/python bench/bp_variants.py c4 imagenet madry:c4:12 madry:lenet:12 --lr-lenet 1e-4
"""
from __future__ import annotations

import argparse
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
from advtrain.evaluation.metrics import summarize  # noqa: E402
from advtrain.models import build_model  # noqa: E402
from advtrain.training.plain_loop import madry_recipe  # noqa: E402

D_UPP = 2.0
BP = [("bp-20 thesis", "bp", {"steps": 20, "variant": "thesis"}), ("bp-20 sphere", "bp", {"steps": 20, "variant": "sphere"})]
DDN20 = [("ddn-20", "ddn", {"steps": 20})]
MORE = [("bp-100 sphere", "bp", {"steps": 100, "variant": "sphere"}), ("ddn-100", "ddn", {"steps": 100})]


def row(label: str, n: int, success: Tensor, dist: Tensor, seconds: float) -> None:
    s = summarize(success, dist.double(), D_UPP)
    print(f"| {label} | {n} | {s['p_suc']:.3f} | {s['d_bar']:.3f} | {s['p_upp']:.3f} | {seconds:.1f} |", flush=True)


def measure(name: str, model: nn.Module, x: Tensor, y: Tensor, specs: list, round_after: bool) -> None:
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    print(f"\n### {name} ({len(y)} correctly classified images)\n\n| attack (quantized) | N | P_suc | D-bar | P(D<=2) | CPU s |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, attack, opts in specs:
        torch.manual_seed(0)
        t = time.process_time()
        r = build_attack(attack, quantize=True, **opts)(model, x, y)
        row(label, len(y), r.success, l2_norm(r.x_adv - x), time.process_time() - t)
    if round_after:  # DDN-100 unquantized, its output rounded once
        torch.manual_seed(0)
        t = time.process_time()
        r = build_attack("ddn", steps=100)(model, x, y)
        x_q = quantize(r.x_adv)
        with torch.no_grad():
            success = r.success & (model(x_q).argmax(1) != y)
        row("ddn-100 rounded once afterwards", len(y), success, l2_norm(x_q - x), time.process_time() - t)


def mnist_test(n: int) -> tuple[Tensor, Tensor]:
    dm = build_datamodule("mnist_embedded", batch_size=256, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(n)])
    return torch.stack(xs), torch.tensor(ys)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="c4 | imagenet | madry:ARCH:EPOCHS")
    p.add_argument("--n", type=int, default=256, help="first N MNIST test images")
    p.add_argument("--lr-lenet", type=float, default=1e-3, help="learning rate of the cached Madry LeNet")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for spec in args.models:
        if spec == "c4":
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
