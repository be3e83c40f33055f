"""The original AutoAttack (``pyautoattack``, Croce & Hein's code, version 'standard') on the two models
trained elsewhere, per image: the anchors of the parity check (issue 20).

For each (model, threat model, eps) it runs ``AutoAttack(...).run_standard_evaluation`` once and
writes, per image, whether AutoAttack broke it within eps, unquantized and with its images rounded
to 8 bits inside the ball (``advtrain.ops.norms.quantize_within``, the protocol's rounding of a
fixed-budget attack's images), its distortion in that norm, AutoAttack's robust
accuracy after each of its attacks, and the wall time. ``tests/anchors/autoattack_standard.json``
holds the result (small, committed): the default tests compare against it without rerunning
AutoAttack (~900 s per CIFAR budget on one thread).

    OMP_NUM_THREADS=1 .venv/bin/python bench/autoattack_anchors.py [--only resnet18_linf_1] [--n-mnist 200] [--n-cifar 20]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from advtrain.ops.norms import NORMS, quantize_within, within_budget  # noqa: E402

ANCHORS = ROOT / "tests" / "anchors" / "autoattack_standard.json"
#: AutoAttack's adversarial images (not committed), to recompute the comparison without rerunning it
IMAGES = ROOT / ".cache" / "anchors"
#: key -> (model, threat model, eps); the budgets of issue 20's "Must show"
RUNS = {
    "resnet18_linf_1": ("resnet18", "linf", 1 / 255),
    "lenet5_l2_2": ("lenet5", "l2", 2.0),
    "lenet5_linf_0.3": ("lenet5", "linf", 0.3),
    "resnet18_l2_0.1": ("resnet18", "l2", 0.1),
    "resnet18_linf_0.5": ("resnet18", "linf", 0.5 / 255),
    # L1 (AutoAttack standard in L1: APGD-CE with 5 restarts and APGD-T on 5 targets, both with the
    # 3-2-1 eps schedule, FAB-T and Square): MNIST's standard L1 budget, and CIFAR-10 at 2 (of 12),
    # where the naturally trained ResNet-18 keeps some images
    "lenet5_l1_10": ("lenet5", "l1", 10.0),
    "resnet18_l1_2": ("resnet18", "l1", 2.0),
}
AA_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def images(model: str, n_mnist: int, n_cifar: int = 20) -> tuple[nn.Module, Tensor, Tensor, str]:
    """The model, its images and a description of them."""
    from advtrain.models.peer_weights import (autoattack_resnet18_cifar10, foolbox_cifar10_samples,
                                              madry_lenet5_mnist)
    if model == "resnet18":
        x, y = foolbox_cifar10_samples()
        return autoattack_resnet18_cifar10(), x[:n_cifar], y[:n_cifar], f"the first {n_cifar} of foolbox's CIFAR-10 samples"
    from advtrain.data import build_datamodule
    dm = build_datamodule("mnist_embedded", batch_size=100, seed=0)
    dm.setup()
    xs, ys = zip(*[dm.test_set[i] for i in range(n_mnist)])
    return madry_lenet5_mnist(), torch.stack(xs), torch.tensor(ys), \
        f"the first {n_mnist} test digits of mnist_embedded (seed 0)"


def broken(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: str, eps: float) -> tuple[list, list]:
    """Per image: broken within eps (misclassified and in the ball), and the distortion."""
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    dist = NORMS[norm](x_adv - x)
    return (wrong & within_budget(dist, eps)).tolist(), [round(float(d), 6) for d in dist]


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float) -> dict:
    """pyautoattack's standard version on (x, y) at ``norm`` ball ``eps``, one batch: per image broken
    and distortion, unquantized and rounded into the ball; robust accuracies, time, its log lines."""
    from pyautoattack import AutoAttack
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())
    aa = AutoAttack(model, norm=AA_NORM[norm], eps=eps, version="standard", seed=0)
    aa.logger.setLevel(logging.DEBUG)
    aa.logger.addHandler(Keep())
    t0, c0 = time.perf_counter(), time.process_time()
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    b, d = broken(model, x, y, x_adv, norm, eps)
    bq, dq = broken(model, x, y, quantize_within(x_adv, x, eps, norm), norm, eps)
    return {"n": len(y), "threat": norm, "eps": eps,
            "broken": b, "distortion": d, "broken_quantized": bq, "distortion_quantized": dq,
            "robust_accuracy": 1 - sum(b) / len(b), "robust_accuracy_quantized": 1 - sum(bq) / len(bq),
            "time_s": round(seconds, 1), "cpu_s": round(cpu, 1), "threads": torch.get_num_threads(), "x_adv": x_adv,
            "log": [r for r in records if "robust accuracy" in r or "successfully" in r or "clean" in r]}


def run(key: str, n_mnist: int, n_cifar: int) -> dict:
    name, norm, eps = RUNS[key]
    model, x, y, what = images(name, n_mnist, n_cifar)
    result = run_autoattack(model, x, y, norm, eps)
    IMAGES.mkdir(parents=True, exist_ok=True)
    torch.save({"x_adv": result.pop("x_adv"), "y": y}, IMAGES / f"{key}.pt")
    return {"model": name, "images": what, **result}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(RUNS), help=f"comma-separated keys of {', '.join(RUNS)}")
    p.add_argument("--n-mnist", type=int, default=200)
    p.add_argument("--n-cifar", type=int, default=20)
    p.add_argument("--out", type=Path, default=ANCHORS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for key in args.only.split(","):
        result = run(key, args.n_mnist, args.n_cifar)
        anchors = json.loads(args.out.read_text()) if args.out.is_file() else {}
        anchors[key] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(anchors, indent=1) + "\n")
        print(f"{key}: robust accuracy {result['robust_accuracy']:.3f} "
              f"(quantized {result['robust_accuracy_quantized']:.3f}), {result['time_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
