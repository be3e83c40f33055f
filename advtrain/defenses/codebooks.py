"""Codebooks of patch replacement (thesis 6.3.2): PQ k-means (one codebook per slice), a universal
k-means codebook shared by all slices, and the training-free E8 lattice.

Every codebook maps patches ``[m, N, dim]`` (m slices, N patches) to their nearest codewords, the
quantizers q_k of the thesis. k-means is fitted with faiss (on the GPU when faiss sees one).
Codebooks are saved with safetensors (no pickle) with their metadata as JSON.
"""
from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from ..io.files import atomic_write
from ..io.fingerprint import CHECKSUM, check_checksum, check_finite_state, weights_sha256
from .e8 import E8Lattice
from .patches import from_position_vectors, per_position_vectors

#: codebook kinds: name -> one-line description (for error messages and docs)
KINDS = {"pq": "product quantization, one k-means codebook per slice",
         "universal": "one k-means codebook shared by all slices",
         "e8": "E8 lattice (d = 8, scale s), no training"}
_SEARCH_BLOCK = 1 << 18     # scores computed per chunk: m * chunk * K floats (L2-cache sized)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown codebook {kind!r}; valid: {', '.join(KINDS)}")


class Codebook(nn.Module):
    """Vector quantization per slice: ``to_codewords(patches [m, N, dim])``, each one's nearest codeword."""

    kind: ClassVar[str] = ""

    def to_codewords(self, patches: Tensor) -> Tensor:
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """JSON-serialisable description (stored beside the tensors)."""
        raise NotImplementedError


class PQCodebook(Codebook):
    """k-means codewords ``centroids [m, K, dim]`` (PQ: one per slice) or ``[1, K, dim]`` (universal)."""

    def __init__(self, centroids: Tensor, universal: bool = False) -> None:
        super().__init__()
        if centroids.dim() != 3 or (universal and centroids.shape[0] != 1):
            raise ValueError(f"centroids must be [slices, K, dim] ([1, K, dim] if universal), "
                             f"got {tuple(centroids.shape)}")
        self.kind = "universal" if universal else "pq"
        self.register_buffer("centroids", centroids.detach().float().contiguous())

    @property
    def K(self) -> int:
        return self.centroids.shape[1]

    def meta(self) -> dict[str, Any]:
        m, k, dim = self.centroids.shape
        return {"kind": self.kind, "K": k, "slices": m, "dim": dim}

    def to_codewords(self, patches: Tensor) -> Tensor:
        """Nearest codeword of each patch in its slice's codebook (L2 nearest neighbour)."""
        m = patches.shape[0]
        idx = self.nearest(patches)
        cb = self.centroids.to(patches.dtype).expand(m, -1, -1)
        return cb.gather(1, idx.unsqueeze(-1).expand(-1, -1, cb.shape[2]))

    def columns(self, idx: Tensor, batch: int) -> Tensor:
        """The codewords of indices ``idx [m, B*L]`` as patch columns ``[B, m, dim, L]`` (the layout
        of :func:`~advtrain.defenses.patches.fold_columns`), without a transposing copy."""
        m = idx.shape[0]
        by_image = idx.view(m, batch, -1).transpose(0, 1).unsqueeze(2)           # [B, m, 1, L]
        cb_t = self.centroids.expand(m, -1, -1).transpose(1, 2)                  # [m, dim, K]
        return cb_t.expand(batch, -1, -1, -1).gather(3, by_image.expand(-1, -1, cb_t.shape[1], -1))

    def nearest(self, patches: Tensor, order: Tensor | None = None) -> Tensor:
        """Index ``[m, N]`` of the nearest codeword of each patch ``[m, N, dim]`` in its slice.

        ``order``: the patches' coordinates are the codewords' permuted by it (a permutation keeps
        distances). Exhaustive search: faiss' fused GEMM + argmin on CPU float32 (about 2x the
        speed of a chunked matmul + argmin, which remains for other devices and dtypes). Either
        rounds in float32 (~1e-7 relative): only codewords at distances equal to that can swap.
        """
        m, n, dim = patches.shape
        if self.centroids.shape[2] != dim or self.centroids.shape[0] not in (1, m):
            raise ValueError(f"codebook of shape {tuple(self.centroids.shape)} does not fit patches "
                             f"{tuple(patches.shape)}")
        cb = self.centroids if order is None else self.centroids[:, :, order.to(self.centroids.device)]
        if patches.device.type == "cpu" and patches.dtype == torch.float32 and _faiss() is not None:
            return self._faiss_nearest(patches, cb, order)
        return _matmul_nearest(patches, cb.to(patches.dtype).expand(m, -1, -1))

    def _faiss_nearest(self, patches: Tensor, cb: Tensor, order: Tensor | None) -> Tensor:
        faiss = _faiss()
        key = (self.centroids.data_ptr(), self.centroids._version, None if order is None else tuple(order.tolist()))
        cached = _FAISS_INDEXES.get(self)
        if cached is None or cached[0] != key:  # one flat L2 index per slice's codebook, rebuilt on change
            indexes = []
            for book in cb.detach().cpu().float().contiguous():
                index = faiss.IndexFlatL2(book.shape[1])
                index.add(book.numpy())
                indexes.append(index)
            cached = _FAISS_INDEXES[self] = (key, indexes)
        indexes = cached[1]
        faiss.omp_set_num_threads(torch.get_num_threads())
        m, n, dim = patches.shape
        groups = patches.detach().reshape(1, m * n, dim) if len(indexes) == 1 else patches.detach()
        out = torch.empty(groups.shape[:2], dtype=torch.long)
        for rows, index, dst in zip(groups, indexes, out):
            _, labels = index.search(rows.contiguous().numpy(), 1)
            dst.copy_(torch.from_numpy(labels[:, 0]))
        return out.view(m, n)


#: faiss indexes of the PQ codebooks, kept outside the modules (copy/pickle never sees them)
_FAISS_INDEXES: "weakref.WeakKeyDictionary[PQCodebook, tuple]" = weakref.WeakKeyDictionary()


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _matmul_nearest(patches: Tensor, cb: Tensor) -> Tensor:
    """Nearest codeword by scores ||c||^2 - 2 p.c (batched matmul), in cache-sized chunks."""
    m, n, _ = patches.shape
    c2 = cb.pow(2).sum(-1).unsqueeze(1)                        # [m, 1, K]
    chunk = max(1, _SEARCH_BLOCK // (m * cb.shape[1]))
    out = torch.empty(m, n, dtype=torch.long, device=patches.device)
    for s in range(0, n, chunk):
        out[:, s:s + chunk] = torch.baddbmm(c2, patches[:, s:s + chunk], cb.transpose(1, 2), alpha=-2.0).argmin(-1)
    return out


class E8Codebook(Codebook):
    """Each depth-8 vector of a patch replaced by its nearest point of ``scale * E8``."""

    kind = "e8"

    def __init__(self, scale: float = 1.0, d: int = 8) -> None:
        super().__init__()
        if d != 8:
            raise ValueError(f"the E8 codebook needs slices of depth d = 8, got d = {d}")
        self.lattice = E8Lattice(scale)

    def meta(self) -> dict[str, Any]:
        return {"kind": "e8", "scale": self.lattice.scale}

    def to_codewords(self, patches: Tensor) -> Tensor:
        return from_position_vectors(self.lattice.nearest_point(per_position_vectors(patches, 8)))

    def to_codewords_map(self, feat: Tensor) -> Tensor:
        """Every depth-8 pixel vector of ``feat [B, 8m, H, W]`` decoded in place (slice k: channels
        8k..8k+7). A patch's quantization is that of its pixels, so with the pointwise strategies
        (plain, linf, linear) the average of overlapping patches is this map, exactly and 9x cheaper."""
        b, ch, h, w = feat.shape
        # decoded with the 8 coordinates contiguous: reductions over them ~1.7x faster than strided
        vectors = feat.reshape(b, ch // 8, 8, h * w).transpose(2, 3).contiguous()
        return self.lattice.nearest_point(vectors).transpose(2, 3).reshape(b, ch, h, w)


def fit_kmeans(patches: Tensor, K: int, universal: bool = False, kmeans_steps: int = 20, seed: int = 0,
               gpu: bool | None = None, progress: bool | None = None, label: str = "",
               points_per_codeword: int = 64) -> PQCodebook:
    """Fit a PQ (per slice) or universal k-means codebook of ``K`` codewords with faiss.

    Args:
        patches: training patches ``[m, N, dim]`` from the clean training set.
        gpu: use faiss' GPU k-means; default: when faiss sees a GPU.
        progress: a progress bar over the slices (None: when stderr is a terminal), titled ``label``.

    faiss trains on a uniform sample of at most ``points_per_codeword * K`` of the patches (its
    ``max_points_per_centroid``; 64 keeps 4x less work than faiss' default 256, above the 39 it
    warns about). The nearest-codeword assignment then uses every codeword as usual.
    """
    import faiss

    m, n, dim = patches.shape
    data = patches.reshape(1, m * n, dim) if universal else patches
    available = data.shape[1]
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"K (codewords) must be a positive integer, got {K!r}")
    if K > available:
        raise ValueError(f"K={K} codewords exceed the number of training patches ({available} "
                         f"{'in all' if universal else 'per slice'}): lower K or collect more patches")
    if gpu is None:
        gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    cents = []
    for k in progress_bar(range(data.shape[0]), data.shape[0], progress, f"k-means {label}".strip()):
        x = np.ascontiguousarray(data[k].detach().float().cpu().numpy())
        km = faiss.Kmeans(dim, K, niter=kmeans_steps, seed=seed + k, gpu=bool(gpu), verbose=False,
                          max_points_per_centroid=points_per_codeword)
        km.train(x)
        cents.append(torch.from_numpy(km.centroids.copy()).view(K, dim))
    return PQCodebook(torch.stack(cents), universal=universal)


def progress_bar(items: Iterable[Any], total: int | None, show: bool | None, what: str) -> Iterable[Any]:
    """``items`` behind a tqdm bar titled ``what`` (``show`` None: when stderr is a terminal)."""
    if show is False:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=what, disable=None if show is None else not show, leave=False)


def build_codebook(meta: dict[str, Any], tensors: dict[str, Tensor], d: int) -> Codebook:
    """Rebuild a codebook from its saved ``meta`` and tensors."""
    if meta["kind"] == "e8":
        return E8Codebook(scale=meta["scale"], d=d)
    return PQCodebook(tensors["centroids"], universal=meta["kind"] == "universal")


def save_safetensors(path: str | Path, tensors: dict[str, Tensor], header: dict[str, Any]) -> Path:
    """Write ``tensors`` with ``header`` (JSON) as safetensors metadata; atomic replace."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"advtrain": json.dumps(header), CHECKSUM: weights_sha256(tensors)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read what :func:`save_safetensors` wrote: (tensors, header)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codebook file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(meta["advtrain"]) if "advtrain" in meta else None
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable codebook file ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not an advtrain codebook file (no 'advtrain' metadata)")
    check_finite_state(tensors, f"codebook file {path}")
    check_checksum(tensors, meta.get(CHECKSUM), f"codebook file {path}")
    return tensors, header
