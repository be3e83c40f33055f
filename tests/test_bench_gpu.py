"""bench/gpu.py runs on a CPU-only machine: its GPU parts are skipped with a message, and --smoke
runs every code path (attacks, DDP step, faiss k-means) on the CPU."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("faiss")


BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the real benchmark would run")
def test_without_gpu_the_gpu_parts_are_skipped_with_a_message(capfd):
    load_bench().main([])
    assert "no CUDA GPU visible: skipping" in capfd.readouterr().out


def test_smoke_runs_every_part_on_the_cpu():
    """As a user runs it (the DDP part spawns processes that import the script by its path)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, env=env,
                         timeout=300)
    out = run.stdout
    assert run.returncode == 0, run.stderr[-2000:]
    for line in ("bp-2", "pgd-2", "ddn-2", "PGD-2 + SGD step", "training images/s", "faiss-cpu:"):
        assert line in out, (line, out)
