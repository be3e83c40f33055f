"""The training epoch's metrics as torchmetrics states that travel in the checkpoint.

Logged through ``self.log(name, metric)`` (Lightning computes, syncs across processes and resets them at
each epoch end). A run resumed mid-epoch loads the states saved with the checkpoint, so its epoch values
cover the whole epoch, not only the batches after the resume.
"""
from __future__ import annotations

from typing import Any

from torch import nn
from torchmetrics import MeanMetric

from ..distributed import gather
from .resume import own_rng_state


class TrainMetrics(nn.Module):
    """train/acc, train/adv_l2 (mean L2 of the perturbations), train/adv_success, per image."""

    def __init__(self) -> None:
        super().__init__()
        self.acc, self.adv_l2, self.adv_success = MeanMetric(), MeanMetric(), MeanMetric()

    def _metrics(self) -> dict[str, MeanMetric]:
        return {"acc": self.acc, "adv_l2": self.adv_l2, "adv_success": self.adv_success}

    def gathered_state(self) -> list[dict[str, Any]]:
        """Every process' states (a collective under DDP, like the RNG states), plain tensors."""
        own = {name: {k: v.detach().cpu().clone() for k, v in m.metric_state.items()} | {"_n": m._update_count}
               for name, m in self._metrics().items()}
        return gather(own)

    def load_gathered_state(self, saved: list[dict[str, Any]] | dict[str, Any]) -> None:
        """This process' entry of :meth:`gathered_state` (rank 0's, with a warning, on another world size)."""
        own = own_rng_state(saved)
        for name, m in self._metrics().items():
            state = dict(own.get(name, {}))
            m._update_count = int(state.pop("_n", 0))
            for k, v in state.items():
                setattr(m, k, v.to(getattr(m, k).device))
            m._computed = None
