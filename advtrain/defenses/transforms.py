"""Input-transform baseline defenses of thesis 6.2 / Table 6.3: bit-depth reduction, median
smoothing, pixel deflection, and the bilateral filter of chapter 4. Pixels in [0, 1], NCHW.

Each declares ``needs_bpda``: True for the ones attacked through BPDA (``bpda.py``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.checks import check_count, check_flag, check_positive
from ..ops.norms import clip_box, round_to_levels
from ..smoothing.bilateral import bilateral_filter
from .registry import register_defense


@register_defense("bit_depth")
class BitDepth(nn.Module):
    """Bit-depth reduction to ``bits`` bits (Guo et al.; thesis 6.2.1): round(x (2^b-1)) / (2^b-1)."""

    name = "bit_depth"
    needs_bpda = True  # piecewise constant: zero gradient almost everywhere

    def __init__(self, bits: int = 3) -> None:
        super().__init__()
        self.bits = check_count("bits", bits, maximum=8)

    def forward(self, x: Tensor) -> Tensor:
        return round_to_levels(x, 2 ** self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


@register_defense("median")
class MedianSmoothing(nn.Module):
    """Median filter over a ``size`` x ``size`` window per channel (feature squeezing, thesis 6.2.1).

    Matches ``scipy.ndimage.median_filter`` (window offsets -size//2.., upper median for even
    sizes, edge-replicating border for sizes <= 3).
    """

    name = "median"
    needs_bpda = True  # a selection: gradients reach one pixel per window (shattered)

    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.size = check_count("size", size, minimum=2)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k = self.size
        lo, hi = k // 2, k - 1 - k // 2
        padded = F.pad(x.reshape(n * c, 1, h, w), (lo, hi, lo, hi), mode="replicate")
        windows = F.unfold(padded, k)  # [n*c, k*k, h*w]
        med = windows.kthvalue(k * k // 2 + 1, dim=1).values
        return med.view(n, c, h, w)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _haar(x: Tensor) -> tuple[Tensor, Tensor]:
    """One level of the orthonormal 2-D Haar transform: (LL, details [3, ...])."""
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, torch.stack([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2])


def _ihaar(ll: Tensor, det: Tensor) -> Tensor:
    lh, hl, hh = det
    out = ll.new_empty(*ll.shape[:-2], 2 * ll.shape[-2], 2 * ll.shape[-1])
    out[..., 0::2, 0::2] = (ll + lh + hl + hh) / 2
    out[..., 0::2, 1::2] = (ll - lh + hl - hh) / 2
    out[..., 1::2, 0::2] = (ll + lh - hl - hh) / 2
    out[..., 1::2, 1::2] = (ll - lh - hl + hh) / 2
    return out


def wavelet_denoise(x: Tensor, sigma: float, levels: int = 1) -> Tensor:
    """Haar (db1) soft-threshold denoising with BayesShrink thresholds sigma^2 / sigma_x per detail
    sub-band and image, as pixel deflection does (Prakash et al. 2018, thesis 6.2.2)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 2, (-w) % 2
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    ll, det = _haar(xp)
    if levels > 1 and min(ll.shape[-2:]) >= 2:
        ll = wavelet_denoise(ll, sigma, levels - 1)
    var = sigma ** 2
    sig_x = (det.pow(2).mean(dim=(-2, -1), keepdim=True) - var).clamp_min(1e-12).sqrt()
    thr = var / sig_x
    det = det.sign() * (det.abs() - thr).clamp_min(0.0)
    return _ihaar(ll, det)[..., :h, :w]


@register_defense("pixel_deflection")
class PixelDeflection(nn.Module):
    """Pixel deflection (thesis 6.2.2): ``deflections`` random pixels per channel take the value of a
    random pixel in the square window of apothem ``window``, more rarely where the robust activation
    map is high, then Haar BayesShrink wavelet denoising with noise level ``sigma``.

    The robust activation map is a simple model-free stand-in for CAM: the local mean (over the
    window) of the distance to the image's mean intensity, scaled to [0, 1] per image. Deflections
    are drawn in parallel from the input (the reference code copies sequentially). Random: the
    global torch RNG is used (the evaluation seeds it per batch).
    """

    name = "pixel_deflection"
    needs_bpda = True  # random pixel copies
    randomized = True  # a new draw per call: attacked with EOT, scored over draws (eot.py)

    def __init__(self, deflections: int = 200, window: int = 10, sigma: float = 0.04,
                 levels: int = 1, use_map: bool = True) -> None:
        super().__init__()
        self.deflections = check_count("deflections", deflections, minimum=0)
        self.window = check_count("window", window)
        self.sigma = check_positive("sigma", sigma, allow_zero=True)
        self.levels = check_count("levels", levels)
        self.use_map = check_flag("use_map", use_map)

    def activation_map(self, x: Tensor) -> Tensor:
        """[N, H, W] in [0, 1]: high where the image departs from its mean (the object)."""
        energy = (x - x.mean(dim=(1, 2, 3), keepdim=True)).abs().mean(dim=1, keepdim=True)
        k = 2 * self.window + 1
        local = F.avg_pool2d(energy, k, stride=1, padding=self.window, count_include_pad=False)
        lo = local.amin(dim=(2, 3), keepdim=True)
        hi = local.amax(dim=(2, 3), keepdim=True)
        return ((local - lo) / (hi - lo).clamp_min(1e-12)).squeeze(1)

    def deflect(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k = self.deflections
        rows = torch.randint(0, h, (n, c, k), device=x.device)
        cols = torch.randint(0, w, (n, c, k), device=x.device)
        src_r = (rows + torch.randint(-self.window, self.window + 1, rows.shape, device=x.device)).clamp(0, h - 1)
        src_c = (cols + torch.randint(-self.window, self.window + 1, cols.shape, device=x.device)).clamp(0, w - 1)
        flat = x.reshape(n, c, h * w)
        dst, src = rows * w + cols, src_r * w + src_c
        if self.use_map:
            amap = self.activation_map(x).reshape(n, 1, h * w).expand(n, c, h * w)
            keep = torch.rand(dst.shape, device=x.device) >= amap.gather(2, dst)
            src = torch.where(keep, src, dst)  # rejected deflections copy the pixel onto itself
        return flat.scatter(2, dst, flat.gather(2, src)).view(n, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return clip_box(wavelet_denoise(self.deflect(x), self.sigma, self.levels))

    def extra_repr(self) -> str:
        return f"deflections={self.deflections}, window={self.window}, sigma={self.sigma}"


@register_defense("bilateral")
class Bilateral(nn.Module):
    """Bilateral filtering (thesis ch. 4, 6.5) in front of the classifier: by default the library's
    ``advtrain.smoothing.bilateral.bilateral_filter``; ``filter_fn(x, sigma_s, sigma_r, radius)``
    plugs another one in."""

    name = "bilateral"
    needs_bpda = False  # smooth weights: gradients flow through it

    def __init__(self, sigma_s: float = 5.0, sigma_r: float = 5.0 / 255.0, radius: int | None = None,
                 filter_fn: Callable[..., Tensor] | None = None) -> None:
        super().__init__()
        self.sigma_s, self.sigma_r = check_positive("sigma_s", sigma_s), check_positive("sigma_r", sigma_r)
        self.radius = None if radius is None else check_count("radius", radius)
        self.filter_fn = bilateral_filter if filter_fn is None else filter_fn

    def forward(self, x: Tensor) -> Tensor:
        return self.filter_fn(x, sigma_s=self.sigma_s, sigma_r=self.sigma_r, radius=self.radius)

    def extra_repr(self) -> str:
        return f"sigma_s={self.sigma_s}, sigma_r={self.sigma_r}, radius={self.radius}"
