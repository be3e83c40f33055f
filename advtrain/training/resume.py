"""Exact resume: a training sampler that can restart mid-epoch, and RNG state capture/restore.

Lightning restores model, optimizer, schedulers and loop counters from a checkpoint, but a plain
shuffled ``DataLoader`` draws a new permutation when resumed mid-epoch, and the RNG state (used by
random-start attacks and dropout) is not saved. :class:`EpochSampler` derives each epoch's order
from ``(seed, epoch)`` alone and skips the batches already trained; :func:`rng_state` /
:func:`set_rng_state` carry the generators through the checkpoint, one state per process
(:func:`gather_rng_states`, :func:`own_rng_state`).
"""
from __future__ import annotations

import random
import warnings
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..distributed import dist_info, gather

#: returns (training batches fetched so far over all epochs, Lightning's ``limit_train_batches``)
Progress = Callable[[], tuple[int, "int | float"]]


class EpochSampler(DistributedSampler):
    """Shuffled order per epoch from ``torch.Generator().manual_seed(seed + epoch)``, sharded like
    ``DistributedSampler`` (rank r takes every world-th index) when a process group exists.

    Subclassing ``DistributedSampler`` keeps Lightning from replacing it under DDP. ``progress``
    tells the sampler, when an epoch's iteration starts, which epoch it is and how many batches of
    it were already trained (non-zero only right after a mid-epoch resume); those are skipped.
    """

    def __init__(self, data_len: int, batch_size: int, seed: int, progress: Progress,
                 drop_last: bool = False) -> None:  # noqa: D107 -- no super().__init__: world is read lazily
        self.data_len = data_len
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.drop_last = drop_last
        self.shuffle = True
        self.epoch = 0

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return dist_info()[1]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return dist_info()[0]

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        w = self.num_replicas
        return self.data_len // w if self.drop_last else -(-self.data_len // w)

    @property
    def total_size(self) -> int:  # type: ignore[override]
        return self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's full index list for ``epoch`` (padded by wrap-around like DistributedSampler)."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        idx = torch.randperm(self.data_len, generator=g).tolist()
        if len(idx) < self.total_size:
            idx += idx[: self.total_size - len(idx)]
        return idx[: self.total_size][self.rank:self.total_size:self.num_replicas]

    def batches_per_epoch(self, limit: int | float = 1.0) -> int:
        """Batches per epoch on this rank, with Lightning's ``limit_train_batches`` applied."""
        n = self.num_samples // self.batch_size if self.drop_last else -(-self.num_samples // self.batch_size)
        if isinstance(limit, int) and not isinstance(limit, bool):
            n = min(n, limit)
        elif isinstance(limit, float):
            n = int(n * limit)
        return max(n, 1)

    def __iter__(self) -> Iterator[int]:
        trained, limit = self.progress()
        epoch, done = divmod(trained, self.batches_per_epoch(limit))
        self.epoch = epoch
        idx = self.epoch_indices(epoch)
        start = done * self.batch_size
        return iter(idx[start:] if start < len(idx) else idx)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler`: resumable mid-epoch.

    Its position needs no state of its own (the sampler reads the training progress), so
    ``state_dict`` holds the sampler's seed only; ``load_state_dict`` warns when a run resumes with
    another seed (another data order). Having the two methods is what tells Lightning the loader
    resumes exactly (otherwise it warns on a mid-epoch resume).
    """

    def state_dict(self) -> dict:
        return {"seed": self.sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.sampler.seed) != self.sampler.seed:
            warnings.warn(f"resuming with data order seed {self.sampler.seed}, the checkpoint used "
                          f"{state['seed']}: the remaining batches differ from the original run", stacklevel=2)


def resumable_loader(loader: DataLoader, seed: int, progress: Progress) -> ResumableLoader:
    """The same loader (dataset, batch size, workers, collate) with an :class:`EpochSampler`."""
    if loader.batch_size is None:
        raise ValueError("exact resume needs a DataLoader with a batch_size (no custom batch_sampler)")
    sampler = EpochSampler(len(loader.dataset), loader.batch_size, seed, progress, loader.drop_last)
    return ResumableLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                           num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                           pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                           persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
                           worker_init_fn=loader.worker_init_fn)


def rng_state() -> dict:
    """Every generator a training step may draw from: torch (CPU, CUDA), numpy, Python.

    Plain tensors, ints and tuples only, so checkpoints load with ``torch.load(weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict]:
    """:func:`rng_state` of every process, indexed by rank (a list of one without a process group).

    A collective: under DDP every rank must call it (Lightning's checkpoint hooks run on all ranks).
    """
    return gather(rng_state())


def own_rng_state(saved: "list[dict] | dict | None") -> dict | None:
    """This process' entry of :func:`gather_rng_states` (checkpoints of one process: a single dict).

    A checkpoint written by another number of processes cannot resume exactly (the sampler shards
    differently too): a warning says so and rank 0's state is used.
    """
    if saved is None or isinstance(saved, dict):
        return saved
    rank, world = dist_info()
    if len(saved) != world:
        warnings.warn(f"checkpoint written by {len(saved)} process(es), resumed on {world}: the run "
                      "continues, but not exactly as the original would have", stacklevel=2)
        return saved[0]
    return saved[rank]
