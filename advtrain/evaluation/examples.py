"""The adversarial examples kept for examples.png: the ``EXAMPLES`` images of least worst-case
distortion over the suite, each with the adversarial that achieved it; saved beside results.json
after every attack so a rerun continues them."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

EXAMPLES = 8  # worst-case images kept for examples.png
EXAMPLES_FILE = "examples.pt"
UNRESTRICTED_EXAMPLES = "examples_unrestricted.pt"  # the unrestricted attacks' own rows of examples.png


class Examples:
    """The ``EXAMPLES`` images of least worst-case distortion, with the adversarial achieving it."""

    def __init__(self, items: list | None = None) -> None:
        self.items: dict[int, dict] = {it["index"]: it for it in (items or [])}

    @classmethod
    def resume(cls, path: Path | None) -> Examples:
        """The examples saved at ``path`` by an earlier run (none when there is no such file; a
        warning when it is unreadable)."""
        if path is None or not path.is_file():
            return cls()
        try:
            return cls(torch.load(path, weights_only=True))
        except (RuntimeError, EOFError, OSError, ValueError):
            warnings.warn(f"{path} is unreadable: examples.png shows this run's only")
            return cls()

    def offer(self, index: Tensor, x: Tensor, x_adv: Tensor, l2: Tensor, found: Tensor, label: str) -> None:
        for i in found.nonzero().flatten().tolist():
            k, d = int(index[i]), float(l2[i])
            if k in self.items and self.items[k]["l2"] <= d:
                continue
            self.items[k] = {"index": k, "l2": d, "attack": label, "x": x[i].cpu(), "x_adv": x_adv[i].cpu()}
        self._keep_least()

    def merge(self, others: list[list[dict]]) -> None:
        for items in others:
            for it in items:
                if it["index"] not in self.items or it["l2"] < self.items[it["index"]]["l2"]:
                    self.items[it["index"]] = it
        self._keep_least()

    def _keep_least(self) -> None:
        for k in sorted(self.items, key=lambda k: self.items[k]["l2"])[EXAMPLES:]:
            del self.items[k]

    def sorted(self) -> list[dict]:
        return sorted(self.items.values(), key=lambda it: it["l2"])
