"""Feature-level transfer attacks on one tapped layer, all on the MI-FGSM loop of ``momentum.py``.

* ``naa``  Zhang et al. 2022 (NAA): minimise the weighted neuron attribution of the true class.
* ``fia``  Wang et al. 2021 (FIA): minimise the aggregate-gradient-weighted features.
* ``nrdm`` Naseer et al. 2018 (NRDM): maximise the feature distortion ||f(x') - f(x)||_2.
* ``fda``  Ganeshan et al. 2019 (FDA): raise the low activations, lower the high ones.
* ``ilpd`` Li et al. 2023 (ILPD): cross-entropy through a decayed intermediate-level perturbation.

The layer is a module path of the attacked model (``layer="net.features.3"`` for a built-in C4),
read and replaced with forward hooks only (``advtrain/nn/layers.py``). Without ``layer`` a middle layer is
inferred (``default_layer``). All are untargeted, Linf-budgeted (``family="distortion"``), and
count every forward+backward: NAA and FIA cost ``ens + steps`` gradients. Algorithms, defaults and
the official codes' deviations: /shared/FEATURE_ATTACKS.md section 3.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from .base import AttackContext
from ..ops.checks import check_choice, check_count, check_fraction, check_positive, check_range
from ..nn.layers import LayerTap, find_layers, layer_hooks, layer_names
from .momentum import MomentumIterative
from ..ops.norms import project_linf, view_as_batch
from .registry import register_attack

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish, nn.Tanh, nn.Mish)


def default_layer(model: nn.Module) -> str:
    """A middle layer of ``model``: ResNets' ``layer2`` and EfficientNets' stride-8 stage
    (``blocks.2``), as the NAA/FIA papers' middle blocks; else the middle activation module in
    definition order (``net.features.3`` for C4). Fails asking for ``layer`` when none is found."""
    names = dict(model.named_modules())
    for n in names:
        if n.endswith("layer2") and f"{n[:-6]}layer3" in names:
            return n
        if n.endswith("blocks") and isinstance(names[n], (nn.Sequential, nn.ModuleList)) and len(names[n]) >= 4:
            return f"{n}.2"
    acts = [n for n, m in names.items() if isinstance(m, ACTIVATIONS) and n]
    if not acts:
        raise ValueError(f"cannot infer a middle layer of {type(model).__name__}: pass layer=NAME "
                         f"(valid layers: {', '.join(layer_names(model))})")
    return acts[(len(acts) - 1) // 2]


def _flat_sum(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


class FeatureLevel(MomentumIterative):
    """MI-FGSM whose objective reads the output of ``layer`` (untargeted, except ILPD)."""

    #: this attack's own objective replaces the attacker loss (ILPD keeps it)
    uses_loss = False
    #: a feature objective degrades the true class's features: no targeted form (ILPD has one)
    supports_targets = False

    def __init__(self, eps: float = 16 / 255, layer: str | None = None, **kw) -> None:
        if not self.uses_loss and kw.get("loss") is not None:
            raise ValueError(f"{self.name} has no option 'loss': its objective is a feature loss")
        super().__init__(eps=eps, **kw)
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"layer must be a module name (e.g. 'net.features.3'), got {layer!r}")
        self.layer = layer
        self._layer = ""

    def check_model(self, model: nn.Module, logits: Tensor) -> None:
        """Before a suite runs (``run_suite``): the tapped layer exists in ``model``."""
        find_layers(model, [self.layer or default_layer(model)])

    def _run(self, ctx: AttackContext) -> Tensor:
        if ctx.targets is not None and not self.supports_targets:
            raise ValueError(f"{self.name} is untargeted only (it degrades the true class's features)")
        self._layer = self.layer or default_layer(ctx.model)
        find_layers(ctx.model, [self._layer])  # unknown name: error listing the valid ones
        try:
            return super()._run(ctx)
        finally:  # per-call state (weights, clean features) is not kept on the attack
            for k in ("_weights", "_base", "_clean", "_low"):
                self.__dict__.pop(k, None)

    def _tapped(self, ctx: AttackContext, x: Tensor, leaf: bool = False) -> tuple[Tensor, Tensor]:
        """(logits, output of the layer) for input ``x``."""
        with LayerTap(ctx.model, self._layer, leaf=leaf) as tap:
            logits = ctx.forward(x)
        return logits, tap[self._layer]

    def _feature(self, ctx: AttackContext, x: Tensor) -> Tensor:
        """The layer's output without gradient (clean or baseline features)."""
        with torch.no_grad():
            return self._tapped(ctx, x)[1].float()

    def _class_grad(self, ctx: AttackContext, x: Tensor, target: str) -> Tensor:
        """d F_y / d feature at input ``x``, F the true class's softmax probability or logit: a
        forward and a backward down to the layer (counted as one gradient)."""
        logits, feat = self._tapped(ctx, x, leaf=True)
        out = logits.float().softmax(1) if target == "prob" else logits.float()
        (g,) = torch.autograd.grad(out.gather(1, ctx.y[:, None]).sum(), feat)
        return g.float()


def _normalize_per_sample(t: Tensor) -> Tensor:
    return t / view_as_batch(t.flatten(1).norm(dim=1).clamp_min(torch.finfo(t.dtype).tiny), t)


@register_attack("naa")
class NAA(FeatureLevel):
    """NAA (Zhang et al., CVPR 2022): minimise the weighted attribution
    WA = sum_j relu(A_j) - gamma sum_j relu(-A_j), A_j = (y_j(x_adv) - y'_j) IA_j,
    with y = f_layer, y' = f_layer(x') for the black baseline x' = 0 and the integrated attention
    IA = sum_m dF/dy (path point m) over ``ens`` = N points, L2-normalised per sample (official code).

    Path points (``path``): "paper" / "official" x_m = alpha_m (x + n_m) with alpha_m = m/N, m = 1..N
    (the paper's Alg. 1 and the official code enumerate the same set); "torchattack" alpha_m = m/N,
    m = 0..N-1 (the reimplementations: includes x', excludes x). ``noise``: std of the official
    code's Gaussian path noise n_m in [0, 1] pixels (0.2 in Inception's [-1, 1]; 0 = the paper).
    ``target``: F = the true class's softmax probability ("prob", official) or logit.
    With gamma = 1, WA is linear in the features (the split is a no-op).
    Cost: ens + steps gradients (plus one forward for y').
    """

    def __init__(self, eps: float = 16 / 255, layer: str | None = None, ens: int = 30, gamma: float = 1.0,
                 noise: float = 0.1, path: str = "paper", target: str = "prob", **kw) -> None:
        super().__init__(eps=eps, layer=layer, **kw)
        self.ens = check_count("ens", ens)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.noise = check_positive("noise", noise, allow_zero=True)
        self.path = check_choice("path", path, ("paper", "official", "torchattack"))
        self.target = check_choice("target", target, ("prob", "logit"))

    def _prepare(self, ctx: AttackContext) -> None:
        x = ctx.x
        first = 0 if self.path == "torchattack" else 1
        ia = torch.zeros((), device=x.device)
        for m in range(first, first + self.ens):
            point = x + self.noise * torch.randn_like(x) if self.noise > 0 else x
            ia = ia + self._class_grad(ctx, point * (m / self.ens), self.target)
        self._weights = _normalize_per_sample(ia)
        self._base = self._feature(ctx, torch.zeros_like(x))

    def _objective(self, ctx: AttackContext, x: Tensor) -> Tensor:
        feat = self._tapped(ctx, x)[1].float()
        attribution = (feat - self._base) * self._weights
        wa = _flat_sum(attribution.clamp_min(0)) - self.gamma * _flat_sum((-attribution).clamp_min(0))
        return wa / feat[0].numel()


@register_attack("fia")
class FIA(FeatureLevel):
    """FIA (Wang et al., ICCV 2021): minimise sum(Delta * f_layer(x_adv)), Delta the aggregate
    gradient sum_n dF_y/df at ``ens`` random pixel drops x * M_n (M_n ~ Bernoulli(1 - drop), per
    pixel and channel), L2-normalised per sample. ``target``: F = logit (official) or "prob"
    (torchattack, TransferAttack). ``drop`` 0.3 for normally trained sources, 0.1 for defended ones
    (FIA issue #5). Cost: ens + steps gradients.
    """

    def __init__(self, eps: float = 16 / 255, layer: str | None = None, ens: int = 30, drop: float = 0.3,
                 target: str = "logit", **kw) -> None:
        super().__init__(eps=eps, layer=layer, **kw)
        self.ens = check_count("ens", ens)
        self.drop = check_range("drop", drop, "[0, 1)")  # 1 would drop every pixel
        self.target = check_choice("target", target, ("prob", "logit"))

    def _prepare(self, ctx: AttackContext) -> None:
        x = ctx.x
        agg = torch.zeros((), device=x.device)
        for _ in range(self.ens):
            mask = torch.bernoulli(torch.full_like(x, 1.0 - self.drop))
            agg = agg + self._class_grad(ctx, x * mask, self.target)
        self._weights = _normalize_per_sample(agg)

    def _objective(self, ctx: AttackContext, x: Tensor) -> Tensor:
        return _flat_sum(self._tapped(ctx, x)[1].float() * self._weights)


@register_attack("nrdm")
class NRDM(FeatureLevel):
    """NRDM (Naseer et al. 2018): maximise ||f_layer(x_adv) - f_layer(x)||_2 / size. The loss is flat
    at x, so the iterations start from x + N(0, init_noise^2) in the eps-ball (official code: 0.1).
    Cost: steps gradients (plus one forward for f(x))."""

    def __init__(self, eps: float = 16 / 255, layer: str | None = None, init_noise: float = 0.1, **kw) -> None:
        super().__init__(eps=eps, layer=layer, **kw)
        self.init_noise = check_positive("init_noise", init_noise)

    def _prepare(self, ctx: AttackContext) -> None:
        self._clean = self._feature(ctx, ctx.x)

    def _start(self, ctx: AttackContext) -> Tensor:
        return project_linf(ctx.x + self.init_noise * torch.randn_like(ctx.x), ctx.x, self.eps)

    def _objective(self, ctx: AttackContext, x: Tensor) -> Tensor:
        diff = self._tapped(ctx, x)[1].float() - self._clean
        return -diff.flatten(1).norm(dim=1) / diff[0].numel()


@register_attack("fda")
class FDA(FeatureLevel):
    """FDA (Ganeshan et al. 2019): maximise log||f * 1[f_x < m]||_2 - log||f * 1[f_x >= m]||_2, f the
    layer's output at x_adv, f_x at x and m the clean channel-mean at each spatial position (the
    paper; torchattack takes spatial means per channel and batch-wide norms). One layer, as the NAA
    repository; the FDA paper sums over every ReLU layer. Cost: steps gradients."""

    def _prepare(self, ctx: AttackContext) -> None:
        clean = self._feature(ctx, ctx.x)
        self._low = (clean < clean.mean(dim=1, keepdim=True)).to(clean.dtype)  # channel mean per position

    def _objective(self, ctx: AttackContext, x: Tensor) -> Tensor:
        feat = self._tapped(ctx, x)[1].float()
        tiny = torch.finfo(feat.dtype).tiny
        low = (feat * self._low).flatten(1).norm(dim=1).clamp_min(tiny)
        high = (feat * (1 - self._low)).flatten(1).norm(dim=1).clamp_min(tiny)
        return high.log() - low.log()


@register_attack("ilpd")
class ILPD(FeatureLevel):
    """ILPD (Li et al., NeurIPS 2023): each step, o = f_layer(x + sigma n); the forward of x_adv has
    the layer's output replaced by coef f_layer(x_adv) + (1 - coef) o, and the attacker loss (cross-
    entropy) is taken through it. Official settings: 100 iterations on ResNet-50 ``layer2.3``.
    Cost: steps gradients (plus one forward per step for o)."""

    uses_loss = True
    supports_targets = True

    def __init__(self, eps: float = 16 / 255, layer: str | None = None, sigma: float = 0.05,
                 coef: float = 0.1, **kw) -> None:
        super().__init__(eps=eps, layer=layer, **kw)
        self.sigma = check_positive("sigma", sigma, allow_zero=True)
        self.coef = check_fraction("coef", coef)

    def _objective(self, ctx: AttackContext, x: Tensor) -> Tensor:
        with torch.no_grad():
            _, noisy = self._tapped(ctx, ctx.x + self.sigma * torch.randn_like(ctx.x))
        with layer_hooks(ctx.model, {self._layer: lambda out: self.coef * out + (1 - self.coef) * noisy}):
            logits = ctx.forward(x)
        return ctx.loss_fn(logits, ctx.y, ctx.targets)
