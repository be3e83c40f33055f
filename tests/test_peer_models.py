"""The models trained elsewhere (advtrain.models.peer_weights) load by position into our nets and
classify as their authors report: the realistic subjects of the attack and evaluation tests."""
from __future__ import annotations

import pytest
import torch

from advtrain.models.peer_weights import PEER_FILES, foolbox_cifar10_samples, peer_weight_file

pytestmark = pytest.mark.usefixtures("one_thread")


def test_madry_lenet5_is_accurate(madry_lenet5, mnist_test_batch):
    """advertorch reports ~98.9% on MNIST's test set; on the 256 first embedded test digits a rate
    below 0.95 would mean wrongly loaded weights (a permuted layer gives ~0.1)."""
    x, y = mnist_test_batch
    with torch.no_grad():
        acc = float((madry_lenet5(x).argmax(1) == y).float().mean())
    assert acc >= 0.95


def test_autoattack_resnet18_classifies_foolbox_samples(aa_resnet18):
    """All 20 of foolbox's CIFAR-10 samples are classified correctly (measured 20/20)."""
    x, y = foolbox_cifar10_samples()
    assert x.shape == (20, 3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.no_grad():
        assert int((aa_resnet18(x).argmax(1) == y).sum()) >= 19


def test_unknown_peer_model_is_one_line():
    with pytest.raises(ValueError, match="unknown peer model 'nope'; known: " + ", ".join(PEER_FILES)):
        peer_weight_file("nope")
