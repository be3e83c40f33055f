"""Adversarial magnification (thesis 4.5, eq. 4.16): local normalisation that reveals perturbations.

mag(x) = (x - mu_x(x)) / (beta sigma_x(x) + (1 - beta) sigma_Omega(x)), with the local mean
mu_x = b(x) (bilateral filter), the local deviation sigma_x = b_x((x - mu_x)^2)^{1/2} (bilateral
filter guided by x; the thesis' exponent "-1/2" is read as the square root), and sigma_Omega the
global deviation over the image, per channel. Thesis settings: beta = 0.8, deviation 5 for both
Gaussian kernels (domain in pixels, range on the 8-bit scale, i.e. 5/255 here).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..smoothing.bilateral import DEFAULT_SIGMA_R, DEFAULT_SIGMA_S, bilateral_filter

_STD_FLOOR = 1e-8  # keeps the division finite on flat images (a floor, not a budget)
#: the least display scale s, in local deviations: one 8-bit level is ~0.013 of them on an image of
#: deviation 0.3, so magnifications below 0.01 are float rounding in the filters, not perturbations
MIN_SCALE = 0.01


def adversarial_magnification(img: Tensor, beta: float = 0.8, sigma_s: float = DEFAULT_SIGMA_S,
                              sigma_r: float = DEFAULT_SIGMA_R) -> Tensor:
    """mag(img) of eq. 4.16 for a batch [B, C, H, W]; unbounded, in units of local deviation."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    mean = bilateral_filter(img, sigma_s, sigma_r)
    centred = img - mean
    local_std = bilateral_filter(centred.square(), sigma_s, sigma_r, guide=img).clamp_min(0).sqrt()
    global_std = img.flatten(2).std(dim=2, unbiased=False)[..., None, None]
    return centred / (beta * local_std + (1.0 - beta) * global_std + _STD_FLOOR)


def magnify(x: Tensor, x_adv: Tensor, beta: float = 0.8, sigma_s: float = DEFAULT_SIGMA_S,
            sigma_r: float = DEFAULT_SIGMA_R, quantile: float = 0.99, min_scale: float = MIN_SCALE) -> Tensor:
    """Displayable magnification of ``x_adv`` [B, C, H, W], in [0, 1] (thesis Fig. 4.1).

    mag(x_adv) is mapped by 0.5 + m / (2 s), where s (per image and channel) is the larger of the
    ``quantile`` of |mag(x)| (the clean image) and of |mag(x_adv)|: ``magnify(x, x)`` shows the clean
    image on the same scale, a perturbation that adds local variation (noise) shows up as texture,
    one smooth like x barely changes the picture, and at most 1 - ``quantile`` of the pixels saturate.
    (The clean image's quantile alone is 0 on flat images with sharp edges, e.g. 2-bit digits: every
    perturbed pixel was then black or white.) s is at least ``min_scale``: no local variation (only
    the filters' float rounding) gives mid-grey.
    """
    if x.shape != x_adv.shape or x.dim() != 4:
        raise ValueError(f"x and x_adv must be NCHW batches of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(x_adv.shape)}")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile}")
    if not min_scale > 0.0:
        raise ValueError(f"min_scale must be > 0, got {min_scale}")
    with torch.no_grad():
        ref = adversarial_magnification(x, beta, sigma_s, sigma_r)
        mag = adversarial_magnification(x_adv, beta, sigma_s, sigma_r)
        scale = torch.maximum(*(torch.quantile(m.abs().flatten(2).float(), quantile, dim=2) for m in (ref, mag)))
        return (0.5 + mag / (2 * scale[..., None, None].to(mag.dtype).clamp_min(min_scale))).clamp(0.0, 1.0)
