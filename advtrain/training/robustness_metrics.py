"""Validation/test robustness metrics as torchmetrics states (they sync across DDP processes).

Per epoch: clean accuracy on the whole split; on a fixed subset of ``subset`` images (evenly spaced
in the split, so a class-sorted split such as ImageNet's val folder is covered; the same images in
one or several processes), accuracy under a distortion-targeted
attack at a fixed budget (PGD) and the distortion of a success-targeted attack (DDN or BP) over
the images classified correctly: P_suc, mean D-bar (thesis eq. 3.1), median, P_upp and the
operating characteristic P(D) (eq. 3.2), all computed by :class:`advtrain.evaluation.metrics.DistortionStats`,
the evaluation's own metric.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..attacks import Attack
from ..distributed import dist_info
from ..evaluation.metrics import DistortionStats


class RobustnessMetrics(nn.Module):
    """Clean accuracy, accuracy under ``pgd`` and the distortion statistics of ``attack``.

    ``update`` must see the split in loader order; under DDP the loader must be sharded like
    ``DistributedSampler(shuffle=False)`` (Lightning's default for evaluation), so that the
    subset is the same whatever the number of processes: images ``0, s, 2s, ...`` (``subset`` of
    them) with stride ``s = split_size // subset`` (1 until :meth:`set_split_size` is called).
    """

    def __init__(self, num_classes: int, pgd: Attack | None, attack: Attack | None, subset: int,
                 d_upp: float) -> None:
        super().__init__()
        if subset < 0:
            raise ValueError(f"the validation attack subset size must be >= 0, got {subset}")
        self.pgd, self.attack, self.subset, self.d_upp = pgd, attack, subset, float(d_upp)
        self.clean_acc = MulticlassAccuracy(num_classes, average="micro")
        self.pgd_acc = MulticlassAccuracy(num_classes, average="micro")
        self.distortion = DistortionStats(d_upp)  # over X: subset images classified correctly
        self._seen = 0
        self.stride = 1
        self.last_curve: tuple[Tensor, Tensor] | None = None  # (success, l2) of the last compute()

    def set_split_size(self, n: int | None) -> None:
        """Spread the subset over a split of ``n`` images (None: the first ``subset`` images)."""
        self.stride = max(1, n // self.subset) if n and self.subset else 1

    def update(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        """One batch of the split, in loader order."""
        rank, world = dist_info()
        local = self._seen + torch.arange(x.shape[0], device=x.device)
        self._seen += x.shape[0]
        index = rank + local * world  # index in the split (DistributedSampler without shuffling)
        in_subset = (index % self.stride == 0) & (index // self.stride < self.subset)
        logits = model(x)
        self.clean_acc.update(logits, y)
        xs, ys = x[in_subset], y[in_subset]
        if self.pgd is not None and len(ys):
            with torch.no_grad():
                self.pgd_acc.update(model(self.pgd(model, xs, ys).x_adv), ys)
        success = torch.zeros(0, device=x.device)
        l2 = torch.zeros(0, device=x.device)
        correct = logits[in_subset].argmax(1) == ys
        if self.attack is not None and bool(correct.any()):
            res = self.attack(model, xs[correct], ys[correct])
            success, l2 = res.success.float(), res.l2.float()
        self.distortion.update(success, l2)  # always update: every process holds a state to sync

    def compute(self) -> dict[str, float]:
        """Synced values; also keeps ``last_curve`` for the robustness-curve callback."""
        out = {"acc": float(self.clean_acc.compute())}
        if self.pgd is not None and self.subset > 0:
            out["pgd_acc"] = float(self.pgd_acc.compute())
        if self.attack is not None and self.subset > 0:
            stats = self.distortion.compute()
            self.last_curve = self.distortion.last_values
            out.update({"attack_p_suc": stats["p_suc"], "attack_l2_mean": stats["d_bar"],
                        "attack_l2_median": stats["d_median"], "attack_p_upp": stats["p_upp"]})
        return out

    def reset(self) -> None:
        self._seen = 0
        for m in (self.clean_acc, self.pgd_acc, self.distortion):
            m.reset()
