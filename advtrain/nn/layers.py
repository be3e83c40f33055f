"""Layer access by module path: read or replace the output of named modules with forward hooks.

The one mechanism behind every feature-level method (transfer attacks' feature losses, D2B's
throttle planes, the style attack's encoder, patch replacement's feature-layer defenses).
Gradients with respect to a tapped feature are taken with ``torch.autograd.grad`` on the tensor the
hook returned: backward hooks are never used (they break on in-place activations, pytorch#61519).

Layer names are module paths of the model as given, e.g. ``net.features.3`` for a built-in C4
wrapped in ``Normalize`` (``[n for n, _ in model.named_modules()]``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

from torch import Tensor, nn

#: what a hook does with a layer's output: return a replacement tensor, or None to keep it
OutputFn = Callable[[Tensor], "Tensor | None"]


def layer_names(model: nn.Module) -> list[str]:
    """Every module path of ``model`` (the valid layer names), in definition order."""
    return [n for n, _ in model.named_modules() if n]


def find_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The modules at ``names``; an unknown name fails listing the valid ones."""
    if isinstance(names, str):
        names = [names]
    modules = dict(model.named_modules())
    for n in names:
        if not isinstance(n, str) or not n or n not in modules:
            raise ValueError(f"unknown layer {n!r} for {type(model).__name__}; valid layers: "
                             f"{', '.join(layer_names(model))}")
    return {n: modules[n] for n in names}


@contextlib.contextmanager
def layer_hooks(model: nn.Module, fns: Mapping[str, OutputFn]) -> Iterator[None]:
    """Forward hooks on the named modules for the duration: ``fns[name](output)`` may return a
    tensor that replaces the output (the rest of the forward pass uses it), or None."""
    modules = find_layers(model, list(fns))
    handles = [modules[name].register_forward_hook((lambda f: lambda mod, args, out: f(out))(fn))
               for name, fn in fns.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class LayerTap:
    """Records the outputs of named layers during a forward pass (a context manager).

    ``leaf=True`` replaces each output by a detached leaf that requires grad, so
    ``autograd.grad(loss, tap[name])`` gives d loss / d feature without differentiating through the
    layers below (NAA/FIA's attribution weights). Otherwise the record stays connected to the input.
    The layers above receive a copy, so an in-place activation cannot change the record.

    >>> with LayerTap(model, ["net.features.3"]) as tap:
    ...     logits = model(x)
    >>> feat = tap["net.features.3"]
    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str], leaf: bool = False) -> None:
        self.model = model
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError("LayerTap needs at least one layer name")
        find_layers(model, self.layers)
        self.leaf = leaf
        self.outputs: dict[str, Tensor] = {}
        self._ctx: contextlib.AbstractContextManager | None = None

    def _keep(self, name: str) -> OutputFn:
        def fn(out: Tensor) -> Tensor:
            if not isinstance(out, Tensor):
                raise TypeError(f"layer {name!r} returns {type(out).__name__}, not a tensor: tap a module "
                                "whose output is a single tensor")
            if self.leaf:
                out = out.detach().requires_grad_(True)
            self.outputs[name] = out
            return out.clone()  # the layers above get a copy: an in-place activation leaves the record intact
        return fn

    def __enter__(self) -> "LayerTap":
        self.outputs = {}
        self._ctx = layer_hooks(self.model, {n: self._keep(n) for n in self.layers})
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._ctx is not None
        self._ctx.__exit__(*exc)
        self._ctx = None

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.outputs:
            raise KeyError(f"layer {name!r} produced no output in this forward pass (tapped: {self.layers})")
        return self.outputs[name]


def features(model: nn.Module, x: Tensor, layers: str | Sequence[str]) -> dict[str, Tensor]:
    """The outputs of ``layers`` for input ``x`` (one forward pass, connected to ``x``'s graph)."""
    with LayerTap(model, layers) as tap:
        model(x)
    return dict(tap.outputs)
