"""The thesis' built-in networks (thesis 3.2.1)."""
from __future__ import annotations

from torch import Tensor, nn


class C4(nn.Module):
    """MNIST net "C4": conv 64 8x8/2 (same), conv 128 6x6/2, conv 128 5x5/1, LeakyReLU, linear.

    Thesis 3.2.1 (the Cleverhans basic CNN): 28x28 -> 14x14 -> 5x5 -> 1x1.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 8, stride=2, padding=3), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 6, stride=2), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 5, stride=1), nn.LeakyReLU(0.2),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class LeNet(nn.Module):
    """Madry et al. 2017's MNIST net ("LeNet-style"): conv 32 5x5 (same), max-pool 2, conv 64 5x5
    (same), max-pool 2, fc 1024, fc 10, ReLU. 28x28 -> 14x14 -> 7x7."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 1024), nn.ReLU(),
                                        nn.Linear(1024, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int, padding: int) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, a=0.1, nonlinearity="leaky_relu")
    return [conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]


class CifarCNN(nn.Module):
    """CIFAR-10 net (thesis 3.2.1): 3x(128 same), pool, dropout, 3x(256 same), pool, dropout,
    512/256/128 valid convs, global average pooling, linear; BN + LeakyReLU(0.1) everywhere."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        layers += _conv_bn(in_channels, 128, 1) + _conv_bn(128, 128, 1) + _conv_bn(128, 128, 1)
        layers += [nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
        layers += _conv_bn(128, 256, 1) + _conv_bn(256, 256, 1) + _conv_bn(256, 256, 1)
        layers += [nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
        layers += _conv_bn(256, 512, 0) + _conv_bn(512, 256, 0) + _conv_bn(256, 128, 0)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    """Fully connected net: flatten, ``depth`` hidden layers of ``hidden`` ReLU units, linear head
    (the transfer zoo's non-convolutional member; 2 x 256 on 28x28 MNIST)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 256,
                 depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
