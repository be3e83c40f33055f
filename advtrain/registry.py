"""Name -> class registries with keyword validation (attacks, defenses, models, datasets)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

#: options renamed for one name per concept (issue 15): an old name -> the new names it may have become
#: (the first one the factory takes is the one meant). Iteration counts are ``steps``, an inner
#: solver's are named for it; ``eps`` is only an Lp budget.
RENAMED_OPTIONS: dict[str, tuple[str, ...]] = {
    "niter": ("steps", "kmeans_steps"), "iters": ("steps", "cg_steps"), "n_iter": ("steps",),
    "max_iter": ("steps",), "cg_iters": ("cg_steps",), "eps": ("strength",),
}


class Registry(Generic[T]):
    """A named registry; ``build(name, **kw)`` fails listing known names or valid options."""

    def __init__(self, kind: str, sets_name: bool = False) -> None:
        self.kind = kind
        self.sets_name = sets_name
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register under ``names`` (the first one canonical, the rest aliases); with ``sets_name`` a
        class gets ``name`` = the first one, and may not set it itself (one source for the name)."""
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if self.sets_name:
                if "name" in vars(obj):
                    raise TypeError(f"{obj.__name__} sets name itself; the {self.kind} registry sets it "
                                    f"to {names[0]!r}")
                obj.name = names[0]
            for n in names:
                if n in self._items:
                    raise KeyError(f"{self.kind} {n!r} registered twice")
                self._items[n] = obj
            return obj
        return deco

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return self._items.keys()

    def items(self):
        return self._items.items()

    def canonical(self) -> list[str]:
        """Names without aliases (first name registered for each object)."""
        seen: dict[int, str] = {}
        for n, obj in self._items.items():
            seen.setdefault(id(obj), n)
        return list(seen.values())

    def build(self, name: str, **kwargs: Any) -> T:
        factory = self[name]
        check_kwargs(factory, kwargs, f"{self.kind} {name!r}")
        return factory(**kwargs)


def valid_options(factory: Callable[..., Any]) -> list[str]:
    """Keyword options accepted by a class or function (walking up **kwargs to base classes)."""
    names: list[str] = []
    targets = factory.__mro__ if inspect.isclass(factory) else (factory,)
    for t in targets:
        fn = t.__init__ if inspect.isclass(factory) else t
        if inspect.isclass(factory) and "__init__" not in vars(t):
            continue
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        var_kw = False
        for p in sig.parameters.values():
            if p.name == "self":
                continue
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                names.append(p.name)
        if not var_kw:
            break
    return names


def check_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any], what: str,
                 valid: list[str] | None = None) -> None:
    """Raise a clear error for options the factory does not take, naming the new name of a renamed one.

    ``valid``: the options, when the factory's signature does not list them all (its ``**kwargs``
    go to another function)."""
    valid = valid_options(factory) if valid is None else valid
    bad = [k for k in kwargs if k not in valid]
    for old in bad:
        new = next((n for n in RENAMED_OPTIONS.get(old, ()) if n in valid), None)
        if new is not None:
            raise ValueError(f"{what}: option {old!r} was renamed to {new!r}")
    if bad:
        raise ValueError(f"{what} has no option {', '.join(map(repr, bad))}; valid options: {', '.join(valid)}")
