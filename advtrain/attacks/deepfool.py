"""DeepFool in L2 over the top-k candidate classes (Moosavi-Dezfooli et al. 2016; thesis eq. 2.21)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackContext, BestTracker
from ..ops.checks import check_count, check_positive
from ..ops.norms import clip_box, l2_norm, quantize as quantize_8bit, view_as_batch
from .registry import register_attack


@register_attack("deepfool")
class DeepFool(Attack):
    """Untargeted L2 DeepFool, batched with per-sample early stopping.

    At each step, for every candidate class k (the ``candidates`` classes of highest clean logit
    other than the label), f_k = u_k - u_y and w_k = grad f_k; the class of least first-order
    distance |f_k| / ||w_k|| (thesis eq. 2.21) gives the step r = (|f_l| + 1e-4) / ||w_l||^2 w_l.
    The iterate is x + (1 + overshoot) sum(r), clipped (and rounded to 8 bits when ``quantize``).
    A sample leaves the batch once adversarial; it keeps its first (least L2) adversarial iterate.

    Cost: per step one forward+backward on ``candidates`` copies of the still-active samples,
    counted as ``candidates`` gradient computations.
    """

    supports_targets = False
    family = "success"

    def __init__(self, steps: int = 50, candidates: int = 9, overshoot: float = 0.02, **kw) -> None:
        super().__init__(**kw)
        self.steps, self.candidates = check_count("steps", steps), check_count("candidates", candidates)
        self.overshoot = check_positive("overshoot", overshoot, allow_zero=True)

    def _run(self, ctx: AttackContext) -> Tensor:
        if ctx.targets is not None:
            raise ValueError("deepfool is untargeted only; call it without targets "
                             "(targeted L2 attacks: ddn, bp, cw_l2)")
        x, y = ctx.x, ctx.y
        clean = ctx.logits(x)
        k = min(self.candidates, clean.shape[1] - 1)
        cands = clean.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices  # [B, k]
        best = BestTracker(x)
        r_tot = torch.zeros_like(x)
        x_i = x.clone()
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            f, w, logits = self._linearize(ctx, x_i[active], y[active], cands[active], k)
            adv = logits.argmax(1) != y[active]
            hit = torch.zeros_like(best.found)
            hit[active] = adv
            best.update(x_i, hit)
            active = active[~adv]
            if active.numel() == 0:
                break
            f, w = f[~adv], w[~adv]
            w_norm = l2_norm(w.flatten(0, 1)).view(f.shape).clamp_min(1e-12)  # [n, k]
            l = (f.abs() / w_norm).argmin(dim=1)
            f_l = f.gather(1, l[:, None]).squeeze(1)
            w_l = w[torch.arange(len(l), device=x.device), l]
            n_l = w_norm.gather(1, l[:, None]).squeeze(1)
            r_tot[active] += view_as_batch((f_l.abs() + 1e-4) / n_l ** 2, w_l) * w_l
            step = clip_box(x[active] + (1.0 + self.overshoot) * r_tot[active])
            x_i[active] = quantize_8bit(step) if self.quantize else step
        else:
            if active.numel():
                hit = torch.zeros_like(best.found)
                hit[active] = ctx.logits(x_i[active]).argmax(1) != y[active]
                best.update(x_i, hit)
        return best.result()[0]

    @staticmethod
    def _linearize(ctx: AttackContext, x: Tensor, y: Tensor, cands: Tensor, k: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """f_k = u_k - u_y and w_k = grad f_k at ``x`` for the k candidates, in one batched pass.

        Returns (f [n, k], w [n, k, C, H, W], logits [n, classes]).
        """
        n = x.shape[0]
        x_rep = x.repeat_interleave(k, dim=0)
        y_rep = y.repeat_interleave(k)
        c_rep = cands.reshape(-1)

        def gap(logits: Tensor, *_: object) -> Tensor:
            return logits.gather(1, c_rep[:, None]).squeeze(1) - logits.gather(1, y_rep[:, None]).squeeze(1)

        logits, f, w = ctx.loss_and_grad(x_rep, gap, copies=k)  # one pass over k copies: k gradients
        return f.view(n, k), w.view(n, k, *x.shape[1:]), logits.view(n, k, -1)[:, 0]
