"""Patch replacement defense (thesis ch. 6.3): replace the patches of the image and/or of early
feature maps by their nearest codewords learned from clean training data.

At each configured layer the feature map is cut into slices and patches (6.3.1), every patch is
quantized by its slice's codebook (6.3.2: PQ k-means, universal k-means or E8), the replacing patch
is chosen by a strategy (6.3.3, eq. 6.3-6.5), and the map is rebuilt by averaging overlapping
patches and concatenating slices (6.3.4). Several layers can be defended at once, each with its own
codebook and strategy (6.3.5); codebooks are fitted independently on the undefended network.

The replacement is not differentiable; the hooks pass the gradient through unchanged (identity in
the backward pass), so attacking a :class:`PatchReplacement` directly is BPDA (thesis 6.6).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..nn.layers import layer_hooks, layer_names
from ..nn.state import eval_mode
from ..registry import check_kwargs
from .codebooks import (Codebook, E8Codebook, PQCodebook, build_codebook, check_kind, fit_kmeans,
                        load_safetensors, progress_bar, save_safetensors)
from ..io.fingerprint import weights_sha256
from .defended import ATTACK_VIEWS, Defended
from .patches import PatchGeometry, extract_patches, fold_columns, fold_patches, sample_patches
from .registry import register_defense
from .strategies import get_strategy

IMAGE = "image"
FORMAT = "advtrain.patch_codebooks/1"


@dataclass
class LayerConfig:
    """Where and how to replace patches.

    Args:
        layer: ``"image"`` (layer 0, the [0, 1] input) or a module name (e.g. ``"net.features.0"``,
            the first conv of C4); the module's output is replaced.
        a, c, d: patches (2a+1)x(2a+1), stride c, slice depth d (thesis 6.3.1).
        codebook: ``pq``, ``universal`` or ``e8`` (thesis 6.3.2); K codewords (k-means), scale (E8).
        strategy, strength: ``plain``, ``l2``, ``linf`` or ``linear`` with its strength (the thesis'
            epsilon, eq. 6.3-6.5: how far a patch moves toward its codeword).
    """

    layer: str = IMAGE
    a: int = 1
    c: int = 1
    d: int = 1
    codebook: str = "pq"
    K: int = 256
    scale: float = 1.0
    strategy: str = "plain"
    strength: float = 0.0

    def __post_init__(self) -> None:
        self.layer = IMAGE if self.layer in (0, "0") else str(self.layer)
        self.geometry  # validates a, c, d
        check_kind(self.codebook)
        if self.codebook == "e8":
            if self.d != 8:
                raise ValueError(f"the E8 codebook needs slices of depth d = 8, got d = {self.d}")
            if not self.scale > 0:
                raise ValueError(f"E8 scale must be > 0, got {self.scale}")
        elif not isinstance(self.K, int) or self.K < 1:
            raise ValueError(f"K (codewords) must be a positive integer, got {self.K!r}")
        get_strategy(self.strategy, self.strength)

    @property
    def geometry(self) -> PatchGeometry:
        return PatchGeometry(self.a, self.c, self.d)

    @classmethod
    def of(cls, spec: "LayerConfig | dict[str, Any]") -> "LayerConfig":
        if isinstance(spec, cls):
            return spec
        if not isinstance(spec, dict):
            raise ValueError(f"a layer is a LayerConfig or a dict of its options, got {spec!r}")
        check_kwargs(cls, spec, "patch replacement layer")
        return cls(**spec)

    def codebook_fields(self) -> dict[str, Any]:
        """What a fitted codebook depends on (the strategy can change without refitting)."""
        keys = ("layer", "a", "c", "d", "codebook") + (("scale",) if self.codebook == "e8" else ("K",))
        return {k: getattr(self, k) for k in keys}


#: layer fields renamed since files were first saved (the strategy parameter ``eps`` is ``strength``)
_SAVED_RENAMES = {"eps": "strength"}


def model_fingerprint(model: nn.Module) -> str:
    """Identity of an architecture: hash of its parameter/buffer names and shapes (not values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)};".encode())
    return h.hexdigest()[:16]


def valid_layers(model: nn.Module) -> list[str]:
    return [IMAGE] + layer_names(model)


def _check_layers(model: nn.Module, configs: Sequence[LayerConfig]) -> None:
    valid = valid_layers(model)
    names = [c.layer for c in configs]
    for n in names:
        if n not in valid:
            raise ValueError(f"unknown layer {n!r} for {type(model).__name__}; valid layers: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"each layer may be defended once, got {names}")


class _Unfitted(Codebook):
    """Placeholder of a k-means codebook before :meth:`PatchReplacement.fit`."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def to_codewords(self, patches: Tensor) -> Tensor:
        raise RuntimeError(f"the codebook of layer {self.layer!r} is not fitted: call "
                           "PatchReplacement.fit(train_loader) or load one with codebooks=PATH")


class LayerReplacement(nn.Module):
    """Q(F) at one layer (thesis 6.3.1-6.3.4): patches -> codewords -> strategy -> fold.

    The codewords are constants (no gradient); the strategy and the fold are differentiable in
    the original patches, so autograd gives the true gradient almost everywhere ("direct" view).
    """

    needs_bpda = True

    def __init__(self, config: LayerConfig, codebook: Codebook | None = None) -> None:
        super().__init__()
        self.config = config
        if codebook is None:
            codebook = E8Codebook(config.scale, config.d) if config.codebook == "e8" else _Unfitted(config.layer)
        self.codebook = codebook

    @property
    def name(self) -> str:
        return f"patch_replacement[{self.config.layer}]"

    @property
    def fitted(self) -> bool:
        return not isinstance(self.codebook, _Unfitted)

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(self, feat: Tensor) -> Tensor:
        cfg = self.config
        strategy = get_strategy(cfg.strategy, cfg.strength)
        if isinstance(self.codebook, E8Codebook) and cfg.strategy != "l2":
            out = strategy(feat, _constant_like(self.codebook.to_codewords_map, feat))
        elif isinstance(self.codebook, PQCodebook) and cfg.strategy == "plain":
            out = _constant_like(self._plain_pq, feat)
        else:
            patches, layout = extract_patches(feat, cfg.geometry)
            out = fold_patches(strategy(patches, _constant_like(self.codebook.to_codewords, patches)), layout)
        return out.clamp(0.0, 1.0) if cfg.layer == IMAGE else out

    def _plain_pq(self, feat: Tensor) -> Tensor:
        """Plain PQ replacement: search in the "kkd" patch order (the fast copy), fold the chosen
        codewords from F.fold's column layout (no transposing copy)."""
        geom = self.config.geometry
        rows, layout = extract_patches(feat, geom, order="kkd")
        idx = self.codebook.nearest(rows, order=geom.kkd_order() if geom.d > 1 else None)
        return fold_columns(self.codebook.columns(idx, feat.shape[0]).to(feat.dtype), layout)


@register_defense("patch_replacement")
class PatchReplacement(Defended):
    """``model`` with patch replacement at the configured layers (thesis 6.3).

    A :class:`Defended` whose defenses sit inside the model: forward hooks at the named layers
    (a pre-hook on the model for ``"image"``), active only during this module's forward, so
    ``self.model`` stays the undefended classifier. Attack views (see ``Defended.attack_view``):
    ``"bpda"`` replaces each Q by the identity in the backward pass (thesis 6.6), ``"direct"``
    differentiates through it as is, ``"blackbox"`` is the undefended model (Table 6.2).

    Args:
        model: the classifier taking [0, 1] pixels.
        layers: a list of :class:`LayerConfig` (or dicts of its options).
        codebooks: a file written by :meth:`save`; its layers are used, and ``layers`` (if given)
            may only change their strategy and strength.

    ``PatchReplacement(model, layers=[{"layer": "image", "K": 512}]).fit(train_loader)(x)``
    """

    needs_bpda = True
    name = "patch_replacement"

    def __init__(self, model: nn.Module, layers: Sequence[LayerConfig | dict[str, Any]] | None = None,
                 codebooks: str | Path | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        configs = [LayerConfig.of(s) for s in (layers or [])]
        if codebooks is None and not configs:
            raise ValueError("give at least one layer (e.g. layers=[{'layer': 'image', 'K': 256}]) "
                             "or a codebook file (codebooks=PATH)")
        _check_layers(model, configs)
        super().__init__(model, *[LayerReplacement(c) for c in configs] or [nn.Identity()])
        self.last_fit_seconds: float | None = None
        if codebooks is not None:
            self._load(Path(codebooks), configs)

    @property
    def layers(self) -> list[LayerConfig]:
        return [stage.config for stage in self.defenses]

    @property
    def approximated(self) -> list[str]:
        return [stage.name for stage in self.defenses]

    # ----------------------------------------------------------------------------- hooks / views
    @contextlib.contextmanager
    def _hooks(self, straight_through: bool) -> Iterator[None]:
        def apply(stage: LayerReplacement, feat: Tensor) -> Tensor:
            if straight_through:  # forward Q(F), backward identity (BPDA)
                with torch.no_grad():
                    q = stage(feat)
                return feat + (q - feat).detach()
            return stage(feat)

        handles = [self.model.register_forward_pre_hook(
            (lambda s: lambda mod, args: (apply(s, args[0]), *args[1:]))(stage))
            for stage in self.defenses if stage.config.layer == IMAGE]
        inner = {stage.config.layer: (lambda s: lambda out: apply(s, out))(stage)
                 for stage in self.defenses if stage.config.layer != IMAGE}
        try:
            with layer_hooks(self.model, inner):
                yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: Tensor, straight_through: bool = False) -> Tensor:
        with self._hooks(straight_through):
            return self.model(x)

    def attack_view(self, view: str = "bpda", approx: dict | None = None) -> nn.Module:
        """What attacks differentiate; ``approx`` is not supported (the BPDA backward is identity)."""
        if approx:
            raise ValueError("patch replacement supports only the identity BPDA backward (approx=None)")
        if view not in ATTACK_VIEWS:
            raise ValueError(f"unknown attack view {view!r}; valid: {', '.join(ATTACK_VIEWS)}")
        return {"blackbox": self.model, "direct": self, "bpda": _StraightThrough(self)}[view]

    # ----------------------------------------------------------------------------------- fitting
    def collect_patches(self, batches: Iterable[Any], max_patches: int = 50_000, seed: int = 0,
                        max_images: int | None = 10_000, progress: bool | None = None) -> dict[int, Tensor]:
        """Patches ``[m, N, dim]`` (N <= max_patches per slice) of every k-means layer, sampled
        uniformly from the first ``max_images`` training images (the loader's order; None: one
        pass over all) through the undefended model. Only the drawn patches are copied.

        ``progress``: a progress bar over the batches (None: when stderr is a terminal).
        """
        if max_patches < 1:
            raise ValueError(f"max_patches must be >= 1, got {max_patches}")
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
        todo = [i for i, c in enumerate(self.layers) if c.codebook != "e8"]
        inner = [i for i in todo if self.layers[i].layer != IMAGE]
        gen = torch.Generator().manual_seed(seed)
        n_batches = len(batches) if hasattr(batches, "__len__") else None
        if n_batches and max_images is not None and getattr(batches, "batch_size", None):
            n_batches = min(n_batches, math.ceil(max_images / batches.batch_size))
        per_batch = math.ceil(max_patches / n_batches) if n_batches else None
        pools: dict[int, list[Tensor]] = {i: [] for i in todo}
        feats: dict[int, Tensor] = {}
        record = {self.layers[i].layer: (lambda i: lambda out: feats.__setitem__(i, out))(i) for i in inner}
        seen = 0
        with layer_hooks(self.model, record):
            with torch.no_grad():
                for batch in progress_bar(batches, n_batches, progress, "patches"):
                    x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(self._device())
                    if max_images is not None:
                        x = x[:max_images - seen]
                    feats.update({i: x for i in todo if i not in inner})
                    if inner:
                        self.model(x)
                    for i in todo:
                        pools[i].append(sample_patches(feats[i], self.layers[i].geometry,
                                                       per_batch or max_patches, gen).cpu())
                    seen += len(x)
                    if max_images is not None and seen >= max_images:
                        break
        return {i: _sample_rows(torch.cat(pools[i], dim=1), max_patches, gen) if pools[i] else torch.empty(0)
                for i in todo}

    def fit(self, batches: Iterable[Any], max_patches: int = 50_000, kmeans_steps: int = 20, seed: int = 0,
            gpu: bool | None = None, max_images: int | None = 10_000,
            progress: bool | None = None) -> "PatchReplacement":
        """Fit every k-means codebook on clean training patches (thesis 6.3.2); E8 needs none.

        ``batches``: e.g. the training DataLoader (yielding ``(x, y)`` or ``x``); patches are drawn
        from its first ``max_images`` images (see :meth:`collect_patches`); faiss subsamples them
        further (see :func:`fit_kmeans`). ``progress``: progress bars (None: when stderr is a terminal).
        """
        start = time.perf_counter()
        with eval_mode(self.model):
            pools = self.collect_patches(batches, max_patches, seed, max_images, progress)
            for i, patches in pools.items():
                cfg = self.layers[i]
                if patches.numel() == 0:
                    raise ValueError(f"no training patches were collected for layer {cfg.layer!r}")
                self.set_codebook(i, fit_kmeans(patches, cfg.K, universal=cfg.codebook == "universal",
                                                kmeans_steps=kmeans_steps, seed=seed, gpu=gpu,
                                                progress=progress, label=cfg.layer))
        self.last_fit_seconds = time.perf_counter() - start
        return self

    def set_codebook(self, index: int, book: Codebook) -> None:
        """Use a given codebook at layer ``index`` (e.g. a PQCodebook of chosen patches)."""
        self.defenses[index].codebook = book.to(self._device())

    def _device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    # ------------------------------------------------------------------------------- save / load
    def save(self, path: str | Path) -> Path:
        """Codebooks + metadata (layer, a, c, d, K/scale, strategy, strength, model identity) as safetensors."""
        tensors: dict[str, Tensor] = {}
        for i, stage in enumerate(self.defenses):
            if not stage.fitted:
                raise RuntimeError(f"layer {stage.config.layer!r} has no fitted codebook to save; call fit() first")
            tensors.update({f"layer{i}.{k}": v for k, v in stage.codebook.state_dict().items()})
        header = {"format": FORMAT, "model": type(self.model).__name__,
                  "model_fingerprint": model_fingerprint(self.model), "model_sha256": weights_sha256(self.model),
                  "layers": [{**asdict(st.config), "codebook_meta": st.codebook.meta()} for st in self.defenses]}
        return save_safetensors(path, tensors, header)

    @classmethod
    def load(cls, model: nn.Module, path: str | Path,
             layers: Sequence[LayerConfig | dict[str, Any]] | None = None) -> "PatchReplacement":
        """``PatchReplacement(model, layers, codebooks=path)``."""
        return cls(model, layers=layers, codebooks=path)

    def _load(self, path: Path, overrides: Sequence[LayerConfig]) -> None:
        tensors, header = load_safetensors(path)
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown codebook format {header.get('format')!r}, expected {FORMAT!r}")
        mine = model_fingerprint(self.model)
        if header.get("model_fingerprint") != mine:
            raise ValueError(f"{path} holds codebooks fitted for another model ({header['model']}, fingerprint "
                             f"{header['model_fingerprint']}); this model is {type(self.model).__name__} "
                             f"(fingerprint {mine}). Fit codebooks for this model.")
        if "model_sha256" not in header:
            warnings.warn(f"{path} predates weight hashes: it cannot be checked against this model's weights "
                          "(same architecture only); refit it to bind it to the weights", stacklevel=3)
        elif header["model_sha256"] != weights_sha256(self.model):
            raise ValueError(f"{path} holds codebooks fitted for another {header['model']} (same architecture, "
                             "other weights): fit codebooks for this model")
        saved = [LayerConfig(**{_SAVED_RENAMES.get(k, k): v for k, v in spec.items() if k != "codebook_meta"})
                 for spec in header["layers"]]
        _check_layers(self.model, saved)
        if overrides:
            if [o.codebook_fields() for o in overrides] != [s.codebook_fields() for s in saved]:
                raise ValueError(f"{path} holds codebooks for layers {[s.codebook_fields() for s in saved]}; "
                                 f"the given layers {[o.codebook_fields() for o in overrides]} differ (only "
                                 "strategy and strength may change without refitting)")
            saved = list(overrides)
        stages = []
        for i, (spec, cfg) in enumerate(zip(header["layers"], saved)):
            prefix = f"layer{i}."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            book = build_codebook(spec["codebook_meta"], own, cfg.d)
            if cfg.layer == IMAGE and isinstance(book, PQCodebook):
                _check_pixel_codewords(book.centroids, path)
            stages.append(LayerReplacement(cfg, book))
        self.defenses = nn.ModuleList(stages).to(self._device())


def _check_pixel_codewords(centroids: Tensor, path: Path) -> None:
    """Image-layer codewords are patches of pixels: k-means centroids of [0, 1] data lie in [0, 1]."""
    lo, hi = float(centroids.min()), float(centroids.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{path}: image-layer codewords must be pixels in [0, 1], got values in [{lo:.4g}, "
                         f"{hi:.4g}]: the file was modified or fitted on unscaled images; refit it")


def _sample_rows(patches: Tensor, n: int | None, gen: torch.Generator) -> Tensor:
    """At most ``n`` patches per slice of ``[m, N, dim]``, drawn uniformly without replacement."""
    m, total, _ = patches.shape
    if n is None or total <= n:
        return patches
    idx = torch.stack([torch.randperm(total, generator=gen)[:n] for _ in range(m)])
    return patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[2]))


def _constant_like(fn, x: Tensor) -> Tensor:
    """``fn(x)`` computed without gradient; kept in ``x``'s graph with a zero gradient (constant
    codewords: a zero gradient, not an error)."""
    with torch.no_grad():
        out = fn(x.detach())
    return out + 0.0 * x if x.requires_grad else out


class _StraightThrough(nn.Module):
    """The BPDA view of a :class:`PatchReplacement`: same forward, identity backward per layer."""

    def __init__(self, defended: PatchReplacement) -> None:
        super().__init__()
        self.defended = defended

    def forward(self, x: Tensor) -> Tensor:
        return self.defended(x, straight_through=True)
