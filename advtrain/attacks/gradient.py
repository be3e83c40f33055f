"""Distortion-targeted gradient attacks: FGSM (eq. 2.12), I-FGSM/BIM (eq. 2.13-2.14), PGD (eq. 2.15-2.16)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackContext
from ..ops.checks import check_budget, check_count, check_flag, check_positive
from .losses import is_adversarial
from ..ops.norms import clip_box, normalize_l2, project_l2, project_linf, view_as_batch
from .registry import register_attack


@register_attack("fgsm")
class FGSM(Attack):
    """y = clip(x - eps sign(grad J(x))) (thesis eq. 2.12)."""

    norm = "linf"

    def __init__(self, eps: float = 0.3, **kw) -> None:
        super().__init__(**kw)
        self.eps = check_budget(eps, self.norm)

    def _run(self, ctx: AttackContext) -> Tensor:
        _, _, g = ctx.loss_and_grad(ctx.x)
        return self._finish(clip_box(ctx.x - self.eps * g.sign()))


class _Iterative(Attack):
    """Shared loop of I-FGSM and PGD: step, project, optional random start and early stop.

    ``early_stop`` freezes samples once adversarial (their iterate is kept) and drops them from
    the batch's gradient work; the loop ends when every sample is adversarial. Training uses
    ``early_stop=False`` (Madry's PGD).
    """

    def __init__(self, eps: float, steps: int = 20, alpha: float | None = None,
                 random_start: bool = False, early_stop: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.eps = check_budget(eps, self.norm)
        self.steps = check_count("steps", steps)
        self.alpha = check_positive("alpha", alpha) if alpha is not None else self._default_alpha()
        self.random_start = check_flag("random_start", random_start)
        self.early_stop = check_flag("early_stop", early_stop)

    def _default_alpha(self) -> float:
        raise NotImplementedError

    def _step(self, g: Tensor) -> Tensor:
        raise NotImplementedError

    def _project(self, y: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _random_init(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        y = self._random_init(x) if self.random_start else x.clone()
        if not self.early_stop:
            for _ in range(self.steps):
                _, _, g = ctx.loss_and_grad(y)
                y = self._project(y - self.alpha * self._step(g), x)
            return self._finish(y)
        active = torch.arange(x.shape[0], device=x.device)  # samples not yet adversarial
        for _ in range(self.steps):
            labels = ctx.y[active]
            targets = None if ctx.targets is None else ctx.targets[active]
            logits, _, g = ctx.loss_and_grad(y[active], lambda out, *_: ctx.loss_fn(out, labels, targets))
            keep = ~is_adversarial(logits, labels, targets)  # adversarial samples leave the batch
            active, g = active[keep], g[keep]
            if active.numel() == 0:
                break
            y[active] = self._project(y[active] - self.alpha * self._step(g), x[active])
        return self._finish(y)


@register_attack("ifgsm", "bim")
class IFGSM(_Iterative):
    """I-FGSM / BIM: y <- proj_{B_inf[x; eps]}(y - alpha sign grad) (thesis eq. 2.13-2.14).

    Default alpha = 0.08 (thesis 5.3.1) capped at eps.
    """

    norm = "linf"

    def _default_alpha(self) -> float:
        return min(0.08, self.eps)

    def _step(self, g: Tensor) -> Tensor:
        return g.sign()

    def _project(self, y: Tensor, x: Tensor) -> Tensor:
        return project_linf(y, x, self.eps)

    def _random_init(self, x: Tensor) -> Tensor:
        return clip_box(x + torch.empty_like(x).uniform_(-self.eps, self.eps))


@register_attack("pgd_linf")
class PGDLinf(IFGSM):
    """Madry's PGD in Linf: I-FGSM with a uniform random start by default, alpha = 2.5 eps / steps."""

    def __init__(self, eps: float = 0.3, steps: int = 20, alpha: float | None = None,
                 random_start: bool = True, **kw) -> None:
        super().__init__(eps=eps, steps=steps, alpha=alpha, random_start=random_start, **kw)

    def _default_alpha(self) -> float:
        return 2.5 * self.eps / self.steps


@register_attack("pgd_l2")
class PGDL2(_Iterative):
    """PGD2: y <- proj_{B_2[x; eps]}(y - alpha n(grad)) (thesis eq. 2.15-2.16); alpha = eps/2 (5.3.1)."""

    def __init__(self, eps: float = 2.0, steps: int = 20, alpha: float | None = None,
                 random_start: bool = False, **kw) -> None:
        super().__init__(eps=eps, steps=steps, alpha=alpha, random_start=random_start, **kw)

    def _default_alpha(self) -> float:
        return self.eps / 2

    def _step(self, g: Tensor) -> Tensor:
        return normalize_l2(g)

    def _project(self, y: Tensor, x: Tensor) -> Tensor:
        return project_l2(y, x, self.eps)

    def _random_init(self, x: Tensor) -> Tensor:
        d = normalize_l2(torch.randn_like(x))
        r = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / x[0].numel())
        return clip_box(x + d * view_as_batch(r * self.eps, x))
