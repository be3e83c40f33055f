"""Laplacian smoothing speed: batched matrix-free CG on ImageNet-size images (thesis 4.3.2).

Prints, for one 224x224x3 image and for a batch, the graph build time, the time of one
smoothing s-hat_alpha (``--cg-steps`` CG iterations, alpha 0.997) and the time per CG iteration per
image; plus the direct ("dense") solver on an MNIST batch for reference. Medians over ``--repeats`` after a
warm-up. ``--clock cpu`` measures process CPU time (steadier on a shared machine).

    .venv/bin/python bench/smoothing.py [--batch 8] [--cg-steps 50] [--threads 1] [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.attacks as timing  # noqa: E402  (median_time and its CLOCK)
from advtrain.smoothing import LaplacianSmoother  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cg-steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    timing.CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"device {dev}, threads {torch.get_num_threads()}, clock {args.clock}, CG iterations {args.cg_steps}")
    gen = torch.Generator().manual_seed(0)
    for b in (1, args.batch):
        x = torch.rand(b, 3, args.size, args.size, generator=gen).to(dev)
        z = torch.randn(x.shape, generator=gen).to(dev)
        build = timing.median_time(lambda: (LaplacianSmoother(x, 0.997, solver="cg", cg_steps=args.cg_steps), sync()),
                      args.repeats)
        smoother = LaplacianSmoother(x, 0.997, solver="cg", cg_steps=args.cg_steps)
        solve = timing.median_time(lambda: (smoother(z), sync()), args.repeats)
        print(f"CG  {b:3d} x 3x{args.size}x{args.size}: build {build:.3f} s, smoothing {solve:.3f} s, "
              f"{1e3 * solve / args.cg_steps:.2f} ms/iteration, "
              f"{1e3 * solve / args.cg_steps / b:.2f} ms/iteration/image")
    x = torch.rand(64, 1, 28, 28, generator=gen).to(dev)
    z = torch.randn(x.shape, generator=gen).to(dev)
    build = timing.median_time(lambda: (LaplacianSmoother(x, 0.95, solver="dense"), sync()), 1)
    dense = LaplacianSmoother(x, 0.95, solver="dense")
    solve = timing.median_time(lambda: (dense(z), sync()), args.repeats)
    print(f"dense (direct: banded Cholesky on CPU) 64 x 1x28x28: build {build:.3f} s, smoothing {1e3 * solve:.2f} ms")


if __name__ == "__main__":
    main()
