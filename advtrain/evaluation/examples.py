"""The adversarial examples behind examples.png.

Per image of the set X, the least-distortion adversarial any finished attack found (the one that
achieves the image's worst case over the suite, thesis 3.3.2), with the attack and the model's
prediction on it. Only finished attacks count (a crashed attack's partial successes are not in
results.json, so they are not shown either). The perturbation is stored in float16: a display copy
(the distortions are the exact ones of the results). Saved beside results.json after every attack
(``adversarials.pt``; a rerun continues it) with the figure's rows (``examples.pt``): the easiest
images (least worst-case L2), the hardest (largest finite L2) and images no attack broke.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..io.files import atomic_write

EASIEST, HARDEST, UNBROKEN = 4, 4, 2  # rows of examples.png
ADVERSARIALS_FILE = "adversarials.pt"
EXAMPLES_FILE = "examples.pt"
UNRESTRICTED_EXAMPLES = "examples_unrestricted.pt"  # the unrestricted attacks' own rows of examples.png


class Adversarials:
    """Per image index, the least-L2 adversarial offered: ``{"l2", "attack", "pred", "delta"}``."""

    def __init__(self, items: dict[int, dict] | None = None) -> None:
        self.items: dict[int, dict] = dict(items or {})

    def offer(self, index: Tensor, x: Tensor, x_adv: Tensor, l2: Tensor, found: Tensor, pred: Tensor,
              attack: str) -> None:
        """The successes (``found``) of ``attack`` on the images ``index`` (positions in the test set),
        kept where their L2 is below the one held."""
        for i in found.nonzero().flatten().tolist():
            k, d = int(index[i]), float(l2[i])
            if k not in self.items or d < self.items[k]["l2"]:
                self.items[k] = {"l2": d, "attack": attack, "pred": int(pred[i]),
                                 "delta": (x_adv[i] - x[i]).detach().cpu().half()}

    def merge(self, others: list[dict[int, dict]]) -> None:
        """Other holders' items (every rank's, after an attack), the least L2 per image kept."""
        for items in others:
            for k, it in items.items():
                if k not in self.items or it["l2"] < self.items[k]["l2"]:
                    self.items[k] = it

    def rows(self, X: list[int], x: Tensor, y: Tensor, title: str = "") -> list[dict]:
        """examples.png's rows over the images ``X`` (``x``, ``y``: the test set): the ``EASIEST`` of
        least L2, the ``HARDEST`` of largest finite L2 (both in increasing L2), then up to ``UNBROKEN``
        images none of the attacks broke. Each row: ``kind``, ``index``, ``x``, ``label``, and for
        broken images ``x_adv``, ``pred``, ``l2``, ``attack`` (None otherwise)."""
        broken = sorted((k for k in X if k in self.items), key=lambda k: self.items[k]["l2"])
        unbroken = [k for k in X if k not in self.items]
        picks = ([(k, "easiest") for k in broken[:EASIEST]]
                 + [(k, "hardest") for k in broken[EASIEST:][-HARDEST:]]
                 + [(k, f"not broken ({len(unbroken)} of {len(X)})") for k in unbroken[:UNBROKEN]])
        out = []
        for k, kind in picks:
            it = self.items.get(k)
            xk = x[k].detach().cpu().float()
            out.append({"kind": f"{title}{kind}", "index": k, "x": xk, "label": int(y[k]),
                        "x_adv": (xk + it["delta"].float()).clamp(0, 1) if it else None,
                        "pred": it["pred"] if it else None, "l2": it["l2"] if it else None,
                        "attack": it["attack"] if it else None})
        return out


def load_adversarials(path: Path) -> dict[str, Adversarials]:
    """The stores saved at ``path`` (``"suite"``, ``"unrestricted"``); empty ones, with a warning, when
    the file is missing or unreadable (examples.png then shows this run's adversarials only)."""
    try:
        saved = torch.load(path, weights_only=True)
        return {k: Adversarials(saved[k]) for k in ("suite", "unrestricted")}
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError):
        warnings.warn(f"{path} is missing or unreadable: examples.png shows this run's adversarials only")
        return {"suite": Adversarials(), "unrestricted": Adversarials()}


def save_examples(out_dir: Path, stores: dict[str, Adversarials], X: list[int], x: Tensor, y: Tensor) -> None:
    """adversarials.pt (to continue) and the figure's rows: examples.pt, and examples_unrestricted.pt when
    an unrestricted attack found adversarials."""
    atomic_write(out_dir / ADVERSARIALS_FILE, lambda tmp: torch.save({k: s.items for k, s in stores.items()}, tmp))
    atomic_write(out_dir / EXAMPLES_FILE, lambda tmp: torch.save(stores["suite"].rows(X, x, y), tmp))
    if stores["unrestricted"].items:
        rows = stores["unrestricted"].rows(X, x, y, "unrestricted: ")
        atomic_write(out_dir / UNRESTRICTED_EXAMPLES, lambda tmp: torch.save(rows, tmp))


def load_rows(out_dir: Path) -> list[dict]:
    """examples.png's rows saved in ``out_dir`` (the suite's, then the unrestricted attacks')."""
    return [row for name in (EXAMPLES_FILE, UNRESTRICTED_EXAMPLES) if (out_dir / name).is_file()
            for row in torch.load(out_dir / name, weights_only=True)]
