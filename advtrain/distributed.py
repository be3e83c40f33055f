"""Processes for training and evaluation: Lightning Fabric's launcher, and the few collectives the
evaluation shards its work with (torch.distributed; gloo on CPU).

Evaluation work is split in fixed batches dealt round-robin to the ranks; every batch is computed the same
way (same images, same seed) whatever the number of processes, so N processes give one's numbers.
"""
from __future__ import annotations

import os
import pickle
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable

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


def _call(fabric: Any, fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    # no rank leaves (rank 0 would take the rendezvous store down) while another still connects or works;
    # a rank that raised never gets here, and the launcher then ends the others
    fabric.barrier()
    return result


def _call_via_file(fabric: Any, fn: Callable[..., Any], *args: Any) -> str | None:
    """``_call`` in a forked/spawned rank: rank 0's result goes back as the path of a pickle file.

    The launcher hands rank 0's result to the parent through a pipe that the parent reads only after
    joining every process: a result over the pipe's buffer (64 KiB: a results dict with per-image
    arrays) blocks rank 0 in its ``put`` forever and the parent in its ``join``. A path always fits.
    """
    result = _call(fabric, fn, *args)
    if fabric.global_rank != 0:
        return None
    fd, path = tempfile.mkstemp(prefix="advtrain-result-", suffix=".pkl")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _read_result(path: str | None) -> Any:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    finally:
        Path(path).unlink(missing_ok=True)


def launch(fn: Callable[..., Any], procs: int, *args: Any) -> Any:
    """``fn(*args)`` on ``procs`` CPU processes (gloo) by Lightning Fabric's launcher; returns rank 0's result.

    Under torchrun (``WORLD_SIZE > 1``) the processes exist already: Fabric joins their process group.
    Otherwise ``procs > 1`` forks them on Linux (``ddp_fork``: they share ``args``, nothing is pickled but
    rank 0's result), spawns them elsewhere (``ddp_spawn``: ``fn`` and ``args`` must pickle); ``procs == 1``
    runs ``fn`` here, with no process group.
    """
    from lightning.fabric import Fabric

    if isinstance(procs, bool) or not isinstance(procs, int) or procs < 1:
        raise ValueError(f"procs (processes) must be an int >= 1, got {procs!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():  # torchrun: this process is a rank, fn's result stays here
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        fabric = Fabric(accelerator="cpu", strategy="ddp", devices=local, num_nodes=world // local)
        body, read = _call, (lambda result: result)
    elif procs > 1:
        strategy = "ddp_fork" if sys.platform.startswith("linux") else "ddp_spawn"
        fabric = Fabric(accelerator="cpu", strategy=strategy, devices=procs, num_nodes=1)
        body, read = _call_via_file, _read_result
    else:
        return fn(*args)
    port_was_set = "MASTER_PORT" in os.environ
    try:
        return read(fabric.launch(body, fn, *args))
    finally:
        if not port_was_set:  # Fabric's launcher leaves its free port in the environment: the next picks anew
            os.environ.pop("MASTER_PORT", None)
