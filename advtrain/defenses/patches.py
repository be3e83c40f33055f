"""Features, slices and patches (thesis 6.3.1) and their reconstruction (thesis 6.3.4).

A feature map ``F [B, D, H, W]`` is cut along channels into m = D/d slices of depth d, and each
slice into (2a+1)x(2a+1) patches centred on a grid of stride c (overlapping when c < 2a+1).
Borders are replicate-padded so that the grid covers every position. Reconstruction folds the
patches back and averages overlapping values (F.fold of the patches / F.fold of ones), crops the
padding and concatenates the slices: with unchanged patches it is the identity (up to the float32
rounding of the average, bounded in :func:`fold_columns`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class PatchGeometry:
    """Patch half-size ``a`` (patches are (2a+1)x(2a+1)), stride ``c``, slice depth ``d``."""

    a: int = 1
    c: int = 1
    d: int = 1

    def __post_init__(self) -> None:
        _check_int("a (patch half-size)", self.a, 0)
        _check_int("c (stride)", self.c, 1)
        _check_int("d (slice depth)", self.d, 1)
        if self.c > self.k:
            raise ValueError(f"stride c={self.c} must be <= 2a+1={self.k}, else patches leave gaps")

    @property
    def k(self) -> int:
        """Patch side 2a+1."""
        return 2 * self.a + 1

    @property
    def overlapping(self) -> bool:
        return self.c < self.k

    def kkd_order(self) -> Tensor:
        """Index of each "kkd"-ordered patch coordinate in the "dkk" order (see extract_patches)."""
        return torch.arange(self.dim()).view(self.d, self.k, self.k).permute(1, 2, 0).flatten()

    def dim(self) -> int:
        """Length of a patch vector: d (2a+1)^2, laid out (depth, row, column)."""
        return self.d * self.k * self.k

    def slices(self, channels: int) -> int:
        """m = D / d; ``d`` must divide the channel count."""
        if channels % self.d != 0:
            divisors = [q for q in range(1, channels + 1) if channels % q == 0]
            raise ValueError(f"slice depth d={self.d} does not divide the channel count D={channels}; "
                             f"valid d: {divisors}")
        return channels // self.d

    def padding(self, size: int) -> tuple[int, int]:
        """(before, after) padding so that patches of side k at stride c cover ``size`` positions."""
        n = max(1, math.ceil((size - self.k) / self.c) + 1)
        total = (n - 1) * self.c + self.k - size
        return total // 2, total - total // 2


@dataclass(frozen=True)
class PatchLayout:
    """What :func:`fold_patches` needs to rebuild the feature map from its patches."""

    shape: tuple[int, int, int, int]       # B, D, H, W of the feature map
    pad: tuple[int, int, int, int]          # left, right, top, bottom
    geometry: PatchGeometry

    @property
    def padded_hw(self) -> tuple[int, int]:
        _, _, h, w = self.shape
        return h + self.pad[2] + self.pad[3], w + self.pad[0] + self.pad[1]


def _windows(feat: Tensor, geom: PatchGeometry) -> tuple[Tensor, PatchLayout]:
    """Replicate-padded windows of ``feat``, a view ``[m, B, nH, nW, d, k, k]`` (no copy)."""
    if feat.dim() != 4:
        raise ValueError(f"patch replacement works on NCHW feature maps, got shape {tuple(feat.shape)}")
    b, ch, h, w = feat.shape
    m = geom.slices(ch)
    top, bottom = geom.padding(h)
    left, right = geom.padding(w)
    pad = (left, right, top, bottom)
    x = feat.reshape(b * m, geom.d, h, w)
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    # strided windows [B*m, d, nH, nW, k, k] (same patches as F.unfold, much faster on CPU)
    win = x.unfold(2, geom.k, geom.c).unfold(3, geom.k, geom.c)
    return win.reshape(b, m, *win.shape[1:]).permute(1, 0, 3, 4, 2, 5, 6), PatchLayout((b, ch, h, w), pad, geom)


def extract_patches(feat: Tensor, geom: PatchGeometry, order: str = "dkk") -> tuple[Tensor, PatchLayout]:
    """Cut ``feat [B, D, H, W]`` into patches ``[m, B*L, d*(2a+1)^2]`` (one row per patch per slice).

    Slice k holds channels k*d .. (k+1)*d - 1 (thesis 6.3.1); L is the number of grid positions.
    ``order``: a row lists its values by (depth, row, column) ("dkk", the codebooks' layout) or by
    (row, column, depth) ("kkd": the same vector permuted by :meth:`PatchGeometry.kkd_order`, a
    faster copy when d > 1; distances, hence nearest codewords, are unchanged by the permutation).
    """
    win, layout = _windows(feat, geom)
    if order == "kkd":
        win = win.permute(0, 1, 2, 3, 5, 6, 4)
    elif order != "dkk":
        raise ValueError(f"patch order must be 'dkk' or 'kkd', got {order!r}")
    return win.reshape(win.shape[0], -1, geom.dim()), layout


def sample_patches(feat: Tensor, geom: PatchGeometry, n: int, gen: torch.Generator) -> Tensor:
    """At most ``n`` patches per slice ``[m, n, dim]`` of ``feat``, drawn uniformly without
    replacement (independently per slice), copying only the drawn ones."""
    win, _ = _windows(feat, geom)
    m, b, nh, nw = win.shape[:4]
    total = b * nh * nw
    if total <= n:
        return win.reshape(m, total, geom.dim())
    idx = torch.stack([torch.randperm(total, generator=gen)[:n] for _ in range(m)]).to(feat.device)
    rows = torch.arange(m, device=feat.device).unsqueeze(1)
    return win[rows, idx // (nh * nw), idx // nw % nh, idx % nw].reshape(m, n, geom.dim())


def fold_columns(cols: Tensor, layout: PatchLayout) -> Tensor:
    """Rebuild the map from patch columns ``[B, m, dim, L]`` (F.fold's layout): overlapping values
    averaged in the input's precision, slices concatenated.

    Float32 is exact enough: a position covered by n <= (2a+1)^2 patches sums n values, so the
    mean's error is at most about (n + 1) u max|copy| (u = 2^-24; recursive-summation bound
    gamma_{n-1} plus the division's rounding), tested against float64 in the unit tests.
    """
    b, ch, h, w = layout.shape
    geom = layout.geometry
    hp, wp = layout.padded_hw
    cols = cols.reshape(b * (ch // geom.d), geom.dim(), -1)
    out = F.fold(cols, output_size=(hp, wp), kernel_size=geom.k, stride=geom.c)
    if geom.overlapping:
        ones = torch.ones(1, geom.dim(), cols.shape[-1], dtype=cols.dtype, device=cols.device)
        out = out / F.fold(ones, output_size=(hp, wp), kernel_size=geom.k, stride=geom.c)
    left, _, top, _ = layout.pad
    return out.view(b, ch, hp, wp)[:, :, top:top + h, left:left + w]


def fold_patches(patches: Tensor, layout: PatchLayout) -> Tensor:
    """Inverse of :func:`extract_patches` (rows in "dkk" order): see :func:`fold_columns`."""
    b, ch, _, _ = layout.shape
    m = ch // layout.geometry.d
    return fold_columns(patches.reshape(m, b, -1, layout.geometry.dim()).permute(1, 0, 3, 2), layout)


def per_position_vectors(patches: Tensor, d: int) -> Tensor:
    """View patch rows ``[..., d*k*k]`` as their depth-d vectors ``[..., k*k, d]`` (for E8, d = 8)."""
    return patches.unflatten(-1, (d, -1)).transpose(-1, -2)


def from_position_vectors(vectors: Tensor) -> Tensor:
    """Inverse of :func:`per_position_vectors`."""
    return vectors.transpose(-1, -2).flatten(-2)
