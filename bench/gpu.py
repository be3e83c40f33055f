#!/usr/bin/env python
"""GPU throughput on your hardware: attacks, one DDP adversarial-training step, faiss k-means.

1. Attacks: BP-20, PGD-20 (L2) and DDN-20 on an ImageNet-size timm model (random weights), in
   adversarial images per second and as time / (20 raw forward+backward passes), in fp32 and bf16
   (autocast; the input gradient stays fp32).
2. One adversarial-training step (PGD-k inner loop + SGD step) under DDP on all visible GPUs
   (one process per GPU, NCCL), in training images per second over all GPUs.
3. Patch-replacement codebook fit: faiss-gpu k-means against faiss-cpu on the same patches.

On a machine without a GPU each part says so and is skipped; ``--smoke`` runs every code path on
the CPU with a tiny model and tiny sizes instead (a check that the script works, not a benchmark).

    python bench/gpu.py                          # resnet50, batch 64, 224x224
    python bench/gpu.py --model timm:vit_small_patch16_224 --batch 128
    python bench/gpu.py --smoke                  # CPU, seconds
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advtrain.attacks import build_attack  # noqa: E402
from advtrain.models import build_model  # noqa: E402

ATTACKS = {"bp": ("bp", {}), "pgd": ("pgd_l2", {"eps": 2.0}), "ddn": ("ddn", {})}


class Autocast(nn.Module):
    """``model`` run under autocast to ``dtype`` (None: as is), returning fp32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None, device: torch.device) -> None:
        super().__init__()
        self.model, self.dtype, self.device_type = model, dtype, device.type

    def forward(self, x: Tensor) -> Tensor:
        ctx = torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else nullcontext()
        with ctx:
            return self.model(x).float()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up, synchronising the device around each run."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def raw_passes(model: nn.Module, x: Tensor, y: Tensor, n: int) -> Callable[[], None]:
    """``n`` forward+backward passes to the input: the floor of an n-gradient attack."""
    def run() -> None:
        for _ in range(n):
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)
    return run


def bench_attacks(args, device: torch.device) -> None:
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=1000).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16} if device.type == "cuda" else {"fp32": None}
    print(f"\n[attacks] {args.model} (random weights), batch {args.batch}, {args.size}x{args.size}, {device}")
    print(f"{'dtype':<6}{'attack':<8}{'grads':>6}{'s/batch':>10}{'img/s':>9}{'/ raw passes':>14}")
    for label, dtype in dtypes.items():
        net = Autocast(model, dtype, device)
        with torch.no_grad():
            y = net(x).argmax(1)
        for name, (attack_name, options) in ATTACKS.items():
            opts = dict(options, steps=args.steps)
            attack = build_attack(attack_name, **opts)
            grads = attack(net, x, y).grads
            t = timed(lambda: attack(net, x, y), device, args.repeats)
            floor = timed(raw_passes(net, x, y, grads), device, args.repeats)
            print(f"{label:<6}{f'{name}-{args.steps}':<8}{grads:>6}{t:>10.3f}{args.batch / t:>9.1f}{t / floor:>14.2f}", flush=True)


def _ddp_worker(rank: int, world: int, args, backend: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(rank)
    model = build_model(args.model, num_classes=1000).to(device)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    attack = build_attack("pgd_l2", eps=2.0, steps=args.steps)
    x = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def step() -> None:
        x_adv = attack(model, x, y).x_adv   # the inner loop on the local replica (no gradient sync)
        ddp.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x_adv), y).backward()   # gradients all-reduced across the processes
        opt.step()

    t = timed(step, device, args.repeats)
    if rank == 0:
        print(f"{world} x {device.type}, PGD-{args.steps} + SGD step, batch {args.batch} per process: "
              f"{t:.3f} s/step, {world * args.batch / t:.1f} training images/s", flush=True)
    dist.destroy_process_group()


def bench_ddp(args, gpus: int) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free local port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world, backend = (gpus, "nccl") if gpus else (1, "gloo")
    print(f"\n[DDP adversarial training] {args.model}, {world} process(es), backend {backend}")
    mp.spawn(_ddp_worker, args=(world, args, backend, port), nprocs=world, join=True)


def bench_faiss(args, gpus: int) -> None:
    import faiss

    from advtrain.defenses.codebooks import fit_kmeans

    g = torch.Generator().manual_seed(0)
    patches = torch.randn(args.slices, args.patches, args.dim, generator=g)
    print(f"\n[faiss k-means] {args.slices} slices x {args.patches} patches of dim {args.dim}, "
          f"K={args.K}, 20 iterations ({faiss.omp_get_max_threads()} CPU threads)")
    runs = {"faiss-cpu": False} | ({"faiss-gpu": True} if gpus else {})
    times = {}
    for label, gpu in runs.items():
        t = time.perf_counter()
        fit_kmeans(patches, args.K, kmeans_steps=20, gpu=gpu, progress=False)
        times[label] = time.perf_counter() - t
        print(f"{label}: {times[label]:.2f} s", flush=True)
    if len(times) == 2:
        print(f"speed-up gpu / cpu: {times['faiss-cpu'] / times['faiss-gpu']:.1f}x")


def faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="timm:resnet50", help="model factory name (random weights)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="image side")
    ap.add_argument("--steps", type=int, default=20, help="attack iterations")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=16, help="k-means problems (codebook slices)")
    ap.add_argument("--patches", type=int, default=65_536, help="training patches per slice")
    ap.add_argument("--dim", type=int, default=36)
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--smoke", action="store_true",
                    help="no GPU needed: every part on the CPU with a tiny model and sizes (a check, not a benchmark)")
    args = ap.parse_args(argv)
    args.channels = 3
    gpus = torch.cuda.device_count()
    print(f"torch {torch.__version__}, {gpus} CUDA device(s)"
          + "".join(f"\n  cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(gpus)))
    if args.smoke:
        args.model, args.channels, args.batch, args.size, args.steps, args.repeats = "c4", 1, 4, 28, 2, 1
        args.slices, args.patches, args.K = 2, 2000, 16
        print("--smoke: CPU code paths with a tiny model; the figures are not a benchmark")
        bench_attacks(args, torch.device("cpu"))
        bench_ddp(args, 0)
        bench_faiss(args, 0)
        return
    if not gpus:
        print("no CUDA GPU visible: skipping the attack, DDP and faiss-gpu parts "
              "(run with --smoke to check the code paths on the CPU)")
        return
    bench_attacks(args, torch.device("cuda", 0))
    bench_ddp(args, gpus)
    if faiss_gpus():
        bench_faiss(args, faiss_gpus())
    else:
        print("\n[faiss k-means] faiss sees no GPU (faiss-cpu installed?): skipping faiss-gpu vs faiss-cpu "
              "(install faiss-gpu to compare)")


if __name__ == "__main__":
    main()
