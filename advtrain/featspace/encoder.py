"""The style attack's encoder f (FEATURE_ATTACKS.md 2.3): a small VGG-like MNIST net trained here,
independent of the attacked classifier (Xu et al. use an ImageNet VGG-19 for every target).

conv3x3(1->32)+ReLU (relu1_1), conv3x3(32->32)+ReLU, maxpool, conv3x3(32->64)+ReLU (relu2_1,
the content feature, 64x14x14); a linear head on the pooled features makes it a classifier while
training (Eq. 2's "wellness"), and is dropped afterwards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.checks import check_count, check_positive
from ..io.artifacts import load_artifact, save_artifact
from ..io.fingerprint import weights_tag

KIND = "fsa-encoder"


class MnistVggMini(nn.Module):
    """``features(x)`` is the content feature; ``style_layers`` the module paths of Eq. 8's phi_i."""

    content_layer = "features"
    style_layers = ("features.1", "features")

    def __init__(self, in_channels: int = 1, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)
        self.out_channels = 2 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Encoder:
    """A frozen encoder network with its content layer and per-channel feature statistics (for the
    normalized feature distance h(x) = (f(x) - mu) / sigma of Xu et al. App. A.1)."""

    def __init__(self, net: MnistVggMini, channel_mean: Tensor, channel_std: Tensor) -> None:
        self.net = net.eval().requires_grad_(False)
        self.channel_mean, self.channel_std = channel_mean, channel_std
        self.hash = weights_tag(net)

    def __call__(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def normalized(self, x: Tensor) -> Tensor:
        m, s = self.channel_mean.to(x), self.channel_std.to(x)
        return (self(x) - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)

    def to(self, device: torch.device | str) -> "Encoder":
        self.net.to(device)
        return self

    def save(self, path: str | Path) -> Path:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors |= {"channel_mean": self.channel_mean, "channel_std": self.channel_std}
        return save_artifact(path, tensors, KIND, {"arch": "mnist_vgg_mini", "model_hash": self.hash,
                                                    "in_channels": self.net.features[0].in_channels,
                                                    "width": self.net.features[0].out_channels})

    @classmethod
    def load(cls, path: str | Path) -> "Encoder":
        tensors, meta = load_artifact(path, KIND)
        if "channel_std" not in tensors or not bool((tensors["channel_std"] > 0).all()):
            raise ValueError(f"{path}: the encoder's channel std must be > 0 (it normalizes by it): refit it")
        net = MnistVggMini(int(meta["in_channels"]), int(meta["width"]))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(net, tensors["channel_mean"], tensors["channel_std"])


def fit_encoder(batches: Iterable, epochs: int = 3, lr: float = 1e-3, width: int = 32, seed: int = 0,
                progress: bool = True) -> Encoder:
    """Train ``MnistVggMini`` as a classifier (Adam, cross-entropy) on ``batches`` of (x, y)."""
    check_count("epochs (an untrained encoder is no encoder)", epochs)
    check_count("width", width)
    check_positive("lr", lr)
    torch.manual_seed(seed)
    data = list(batches)
    if not data:
        raise ValueError("the encoder needs training images, got none")
    net = MnistVggMini(data[0][0].shape[1], width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * len(data), desc="encoder", unit="batch")
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    net.eval()
    with torch.no_grad():
        feats = torch.cat([net.features(x) for x, _ in data]).transpose(0, 1).flatten(1).double()
    return Encoder(net, feats.mean(1).float(), feats.std(1).clamp_min(1e-6).float())
