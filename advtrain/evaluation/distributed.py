"""Sharding the evaluation across processes (torch.distributed, gloo on CPU) and gathering back.

Work is split in fixed batches dealt round-robin to the ranks; every batch is computed the same way
(same images, same seed) whatever the number of processes, so N processes give one's numbers.
"""
from __future__ import annotations

import os
import socket
import sys
import zlib
from typing import Any, Callable

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_batches(n_batches: int) -> list[int]:
    """Indices of the batches this rank computes (round-robin)."""
    rank, world = dist_info()
    return list(range(rank, n_batches, world))


def gather(obj: Any) -> list[Any]:
    """Every rank's object, in rank order (a one-element list on a single process)."""
    rank, world = dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's object on every rank."""
    rank, world = dist_info()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def batch_seed(seed: int, label: str, batch: int) -> int:
    """A seed for one (attack, batch) pair, stable across processes and Python runs."""
    return (seed * 1_000_003 + zlib.crc32(label.encode()) * 7919 + batch) % (2 ** 63)


def _launched(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], procs: int, *args: Any) -> Any:
    """``fn(*args)`` in the process group torchrun set up (WORLD_SIZE > 1), else on ``procs`` local
    gloo processes (forked on Linux: they share ``args``), else here. Returns ``fn``'s result, or
    None when it ran in spawned processes (they have finished: read what they wrote)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        try:
            return fn(*args)
        finally:
            dist.destroy_process_group()
    if procs <= 1:
        return fn(*args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_launched, args=(procs, port, fn, args), nprocs=procs,
                                          start_method="fork" if sys.platform.startswith("linux") else "spawn")
