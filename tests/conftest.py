"""Shared fixtures: the embedded MNIST data and a C4 trained on it (cached across test runs)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("WANDB_MODE", "offline")

from advtrain.data import build_datamodule  # noqa: E402
from advtrain.models import build_model  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tests"
C4_RECIPE = "c4-adam1e-3-bs64-ep6-seed0-v1"


def train_c4(epochs: int = 6, seed: int = 0) -> torch.nn.Module:
    """Plain (fast) training loop for the shared test model: ~97% test accuracy in ~20 s."""
    torch.manual_seed(seed)
    dm = build_datamodule("mnist_embedded", batch_size=64, seed=0)
    dm.setup()
    model = build_model("c4", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for x, y in dm.train_dataloader():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def mnist_dm():
    dm = build_datamodule("mnist_embedded", batch_size=128, seed=0)
    dm.setup()
    return dm


def cached_c4() -> tuple[torch.nn.Module, str]:
    """The shared C4 and where it came from: loaded from .cache/tests, or trained (~20-60 s) and
    cached there when missing. The benches use it too (never a randomly initialised C4)."""
    path = CACHE / f"{C4_RECIPE}.pt"
    model = build_model("c4", num_classes=10)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), f"trained C4 {C4_RECIPE} (cached {path})"
    model = train_c4()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model, f"trained C4 {C4_RECIPE} (trained now, cached to {path})"


@pytest.fixture(scope="session")
def trained_c4() -> torch.nn.Module:
    """C4 trained on the embedded MNIST train split; weights cached in .cache/tests."""
    return cached_c4()[0]


@pytest.fixture(scope="session")
def mnist_test_batch(mnist_dm):
    """The first 256 test images and labels."""
    xs, ys = zip(*[mnist_dm.test_set[i] for i in range(256)])
    return torch.stack(xs), torch.tensor(ys)


@pytest.fixture(scope="session")
def correct_test_batch(trained_c4, mnist_test_batch):
    """Test images the trained C4 classifies correctly (the thesis' set X)."""
    x, y = mnist_test_batch
    with torch.no_grad():
        keep = trained_c4(x).argmax(1) == y
    return x[keep], y[keep]


@pytest.fixture(scope="module")
def one_thread():
    """torch limited to 1 thread for a test module (restored after): small batched LAPACK and
    elementwise ops crawl with 2 threads on a loaded 2-core machine. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
