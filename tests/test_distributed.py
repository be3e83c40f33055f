"""advtrain.distributed.launch: Lightning Fabric's launcher on CPU (gloo), rank 0's result back to the caller."""
from __future__ import annotations

import os
import sys

import pytest
import torch.distributed as dist
from torch.multiprocessing import ProcessRaisedException

from advtrain.distributed import dist_info, gather, launch


def ranks_seen(tag: str) -> tuple[str, tuple[int, int], list[int]]:
    rank, world = dist_info()
    return tag, (rank, world), gather(rank)


def test_two_processes_form_a_group_and_rank_0s_result_comes_back():
    port = os.environ.get("MASTER_PORT")
    assert launch(ranks_seen, 2, "x") == ("x", (0, 2), [0, 1])  # gather ran over both processes
    assert not dist.is_initialized() and os.environ.get("MASTER_PORT") == port  # nothing left behind here
    assert launch(ranks_seen, 1, "y") == ("y", (0, 1), [0])  # one process: here, no group


def a_megabyte_result() -> bytes:
    return bytes(range(256)) * 4096 if dist_info()[0] == 0 else b""


def test_a_result_larger_than_a_pipe_buffer_comes_back_without_a_hang():
    """The launcher's queue to the parent is a pipe (64 KiB) read only after every process joins: a result
    sent through it blocked rank 0 forever (evaluate.py --procs 2 hung after writing its results)."""
    assert launch(a_megabyte_result, 2) == bytes(range(256)) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork (ddp_fork) is the Linux launcher")
def test_a_failing_rank_raises_in_the_caller_with_its_message():
    def fail_on_rank_1() -> None:  # a closure: runs only because forked processes need no pickling
        if dist_info()[0] == 1:
            raise ValueError("rank 1 failed")

    with pytest.raises(ProcessRaisedException, match="ValueError: rank 1 failed"):
        launch(fail_on_rank_1, 2)


@pytest.mark.parametrize("procs", [0, -1, 1.5, True])
def test_bad_process_count(procs):
    with pytest.raises(ValueError, match="procs .* must be an int >= 1"):
        launch(ranks_seen, procs, "z")
