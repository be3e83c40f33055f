"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Alg. 1): APGD with the CE or DLR loss, and APGD-T (targeted DLR,
the top-k classes tried one after another), in Linf and L2; in L1 the sparse-step variant of Croce &
Hein 2021 ("Mind the box: l1-APGD for sparse adversarial attacks on a box-constrained input space"),
``_L1``.
"""
from __future__ import annotations

import dataclasses
import math
import torch
from torch import Tensor, nn

from .base import Attack, AttackContext
from ..ops.checks import check_budget, check_count, check_flag, check_fraction, check_seed
from .losses import is_adversarial
from ..ops.norms import l2_norm, linf_norm, normalize_l2, project_l1, project_l2, project_linf
from ..ops.norms import quantize as quantize_8bit, quantize_within, view_as_batch
from .registry import register_attack


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j N) at which the step size may halve (Sec. 3.2):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); those in (0, N)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round(., 9): 0.22 * 100 is 22.000000000000004 in floating point, whose ceil would be 23
    return sorted({math.ceil(round(q * steps, 9)) for q in p[1:] if 0 < math.ceil(round(q * steps, 9)) < steps})


@dataclasses.dataclass
class _State:
    """Per-sample state of one APGD run, restricted to the samples still attacked."""

    idx: Tensor       # positions in the batch
    x: Tensor         # clean images
    y: Tensor         # labels
    loss_t: Tensor | None   # the loss' targets (APGD-T's target class, or the user's targets)
    succ_t: Tensor | None   # success criterion's targets (None: misclassification)
    cur: Tensor       # x^(k)
    prev: Tensor      # x^(k-1)
    grad: Tensor      # gradient at x^(k)
    f: Tensor         # f(x^(k))
    eta: Tensor       # step size
    best: Tensor      # x_max: the iterate of least loss
    best_f: Tensor
    best_grad: Tensor
    ups: Tensor       # improving steps since the last checkpoint (condition 1)
    reduced: Tensor   # the step size halved at the last checkpoint (condition 2)
    best_f_check: Tensor  # best loss at the last checkpoint (condition 2)
    topk: Tensor | None = None      # L1: the fraction of coordinates a step moves
    sparsity: Tensor | None = None  # L1: nonzeros of x_max - x at the last checkpoint

    def keep(self, mask: Tensor) -> "_State":
        return _State(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[mask]
                         for f in dataclasses.fields(self)})


class _APGD(Attack):
    """APGD (Alg. 1), minimising the attacker loss (``ce``: -CE of the true class, ``dlr``: eq. 5).

    From x^(0) (a random point of the eps-sphere, clipped to the box), x^(1) = P(x^(0) - eta g(x^(0)))
    and for k >= 1
        z^(k+1) = P(x^(k) - eta^(k) s(grad f(x^(k)))),
        x^(k+1) = P(x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha)(x^(k) - x^(k-1))),
    s = sign (Linf) or g / ||g||_2 (L2), P the projection onto the eps-ball and the box, alpha = 0.75
    (``momentum``), eta^(0) = 2 eps. At the checkpoints w_j (:func:`checkpoints`) eta halves and the
    iterate restarts from x_max (the iterate of least loss so far) when (1) at most rho (w_j -
    w_{j-1}) steps since w_{j-1} improved the loss (the paper writes "fewer than"; AutoAttack's code
    and adv_lib test "at most"), or (2) eta did not halve at w_{j-1} and the
    best loss did not improve since. Each sample has its own eta, checkpoint outcome and x_max.

    The random start draws from a generator seeded with ``seed`` (on CPU: the same numbers as
    AutoAttack's ``torch.manual_seed(seed)`` then ``torch.rand``, so both start alike).

    A sample leaves the batch as soon as an iterate is adversarial (misclassified, or the target when
    targets are given): that iterate is returned. With ``quantize``, an iterate counts only when its
    8-bit rounding is adversarial (one extra forward pass on those samples; the rounding is
    returned), so the returned images are on the grid and adversarial wherever an iterate's rounding
    was. Samples never adversarial get their x_max (rounded when ``quantize``). ``restarts`` runs
    again from new random points on the samples not yet adversarial, as AutoAttack does.

    ``eps`` defaults to 0.3 (Linf) or 2.0 (L2), MNIST's scale as for ``pgd_linf`` / ``pgd_l2``.

    Cost: ``steps`` forward+backward passes per run and one forward on the last iterate, on the
    samples still attacked; ``grads`` counts every one (restarts and targets included).
    """

    family = "distortion"

    default_eps: float

    def __init__(self, eps: float | None = None, steps: int = 100, restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, seed: int = 0, **kw) -> None:
        super().__init__(**kw)
        self.eps = check_budget(self.default_eps if eps is None else eps, self.norm)
        self.steps = check_count("steps", steps)
        self.restarts = check_count("restarts", restarts)
        self.rho = check_fraction("rho", rho)
        self.momentum = check_fraction("momentum", momentum)
        self.seed = check_seed(seed)

    # ---- per norm
    def _direction(self, g: Tensor) -> Tensor:
        raise NotImplementedError

    def _project(self, v: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _random_start(self, x: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    # ---- the attack
    def _runs(self, ctx: AttackContext) -> list[Tensor | None]:
        """The loss targets of the successive runs (None: untargeted loss), each run ``restarts`` times."""
        return [ctx.targets]

    def _run(self, ctx: AttackContext) -> Tensor:
        x = ctx.x
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        out = x.clone()
        out_f = torch.full((x.shape[0],), float("inf"), device=x.device)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for loss_t in self._runs(ctx):
            for _ in range(self.restarts):
                idx = (~done).nonzero().squeeze(1)
                if idx.numel() == 0:
                    return self._rounded(out, x) if self.quantize else out
                self._attack(ctx, idx, loss_t, gen, out, out_f, done)
        return self._rounded(out, x) if self.quantize else out  # samples not done hold their x_max

    def _rounded(self, v: Tensor, x: Tensor) -> Tensor:
        """The 8-bit image of an iterate ``v`` of the images ``x`` (its rounding)."""
        return quantize_8bit(v)

    def _attack(self, ctx: AttackContext, idx: Tensor, loss_t: Tensor | None, gen: torch.Generator,
                out: Tensor, out_f: Tensor, done: Tensor) -> None:
        """One APGD run on the samples ``idx``; writes successes (and better x_max) into ``out``."""
        s, logits = self._begin(ctx, idx, loss_t, self._random_start(ctx.x[idx], gen), 2.0 * self.eps)
        s = self._retire(ctx, s, logits, out, done)
        checks = checkpoints(self.steps)
        last_check = 0
        for k in range(self.steps):
            if s.idx.numel() == 0:
                return
            z = self._project(s.cur - view_as_batch(s.eta, s.x) * self._direction(s.grad), s.x)
            nxt = z if k == 0 else self._project(
                s.cur + self.momentum * (z - s.cur) + (1.0 - self.momentum) * (s.cur - s.prev), s.x)
            logits = self._advance(ctx, s, nxt, grad=k + 1 < self.steps)
            s = self._retire(ctx, s, logits, out, done)  # before a checkpoint moves x^(k+1) to x_max
            if k + 1 in checks:
                s = self._checkpoint(s, k + 1 - last_check)
                last_check = k + 1
        self._keep_best(s, out, out_f)

    def _begin(self, ctx: AttackContext, idx: Tensor, loss_t: Tensor | None, start: Tensor,
               eta: float) -> tuple[_State, Tensor]:
        """The state of a run on the samples ``idx`` from ``start`` (one forward+backward) and its logits."""
        y = ctx.y[idx]
        t = None if loss_t is None else loss_t[idx]
        succ_t = None if ctx.targets is None else ctx.targets[idx]
        logits, f, g = self._evaluate(ctx, start, y, t, grad=True)
        zeros = torch.zeros_like(f, dtype=torch.long)
        s = _State(idx, ctx.x[idx], y, t, succ_t, start, start, g, f, torch.full_like(f, eta), start, f, g, zeros,
                   torch.zeros_like(f, dtype=torch.bool), f)
        return s, logits

    def _advance(self, ctx: AttackContext, s: _State, nxt: Tensor, grad: bool) -> Tensor:
        """Move to the iterate ``nxt`` (one forward, and backward when ``grad``), update x_max; its logits."""
        logits, f, g = self._evaluate(ctx, nxt, s.y, s.loss_t, grad=grad)
        s.prev, s.cur, s.grad = s.cur, nxt, g
        s.ups += (f < s.f).long()
        s.f = f
        better = f < s.best_f
        s.best = torch.where(view_as_batch(better, nxt), nxt, s.best)
        s.best_grad = torch.where(view_as_batch(better, nxt), g, s.best_grad)
        s.best_f = torch.where(better, f, s.best_f)
        return logits

    @staticmethod
    def _keep_best(s: _State, out: Tensor, out_f: Tensor) -> None:
        """Samples never adversarial: keep their x_max if its loss beats that of earlier runs."""
        better = s.best_f < out_f[s.idx]
        out[s.idx[better]] = s.best[better]
        out_f[s.idx[better]] = s.best_f[better]

    def _checkpoint(self, s: _State, window: int) -> _State:
        """Halve eta and restart from x_max where condition (1) or (2) holds (Alg. 1)."""
        halve = (s.ups <= self.rho * window) | (~s.reduced & (s.best_f >= s.best_f_check))
        s.eta = torch.where(halve, s.eta / 2, s.eta)
        s.cur = torch.where(view_as_batch(halve, s.cur), s.best, s.cur)
        s.grad = torch.where(view_as_batch(halve, s.cur), s.best_grad, s.grad)
        s.f = torch.where(halve, s.best_f, s.f)
        s.reduced, s.best_f_check, s.ups = halve, s.best_f.clone(), torch.zeros_like(s.ups)
        return s

    def _evaluate(self, ctx: AttackContext, v: Tensor, y: Tensor, t: Tensor | None,
                  grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, loss and gradient at ``v`` (one forward+backward); forward only when not ``grad``."""
        loss = lambda logits, *_: self.loss_fn(logits, y, t)  # noqa: E731
        if grad:
            return ctx.loss_and_grad(v, loss)
        logits = ctx.logits(v)
        return logits, loss(logits), torch.zeros_like(v)

    def _retire(self, ctx: AttackContext, s: _State, logits: Tensor, out: Tensor, done: Tensor) -> _State:
        """Record and drop the samples whose current iterate is adversarial (its rounding, if ``quantize``)."""
        adv = is_adversarial(logits, s.y, s.succ_t)
        found = s.cur
        if self.quantize and bool(adv.any()):
            found = self._rounded(s.cur, s.x)
            cand = adv.nonzero().squeeze(1)
            ok = is_adversarial(ctx.logits(found[cand]), s.y[cand], None if s.succ_t is None else s.succ_t[cand])
            adv = torch.zeros_like(adv).index_fill_(0, cand[ok], True)
        if not bool(adv.any()):
            return s
        out[s.idx[adv]] = found[adv]
        done[s.idx[adv]] = True
        return s.keep(~adv)


class _Linf:
    """Linf geometry: sign steps, projection onto B_inf[x; eps] and the box (norms.project_linf)."""

    norm = "linf"
    default_eps = 0.3  # MNIST's scale, as pgd_linf
    eps: float

    def _direction(self, g: Tensor) -> Tensor:
        return g.sign()

    def _project(self, v: Tensor, x: Tensor) -> Tensor:
        return project_linf(v, x, self.eps)

    def _random_start(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """x + eps t / ||t||_inf, t uniform in [-1, 1]^d (AutoAttack's start), clipped to the box."""
        t = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        return project_linf(x + self.eps * t / view_as_batch(linf_norm(t).clamp_min(1e-12), x), x, self.eps)


class _L2:
    """L2 geometry: normalised-gradient steps, projection onto B_2[x; eps] and the box."""

    norm = "l2"
    default_eps = 2.0  # MNIST's scale, as pgd_l2
    eps: float

    def _direction(self, g: Tensor) -> Tensor:
        return normalize_l2(g)

    def _project(self, v: Tensor, x: Tensor) -> Tensor:
        return project_l2(v, x, self.eps)

    def _random_start(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """x + eps n / ||n||_2, n standard normal (a point of the eps-sphere), clipped to the box."""
        n = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return project_l2(x + self.eps * n / view_as_batch(l2_norm(n).clamp_min(1e-12), x), x, self.eps)


class _L1:
    """L1 geometry (l1-APGD, Croce & Hein 2021), as AutoAttack's code runs it (``norm='L1'``).

    A step moves only the coordinates of largest |gradient|: the top ``topk`` fraction of them, each
    by eta / (their count) against the sign of the gradient (a step of L1 length eta), then the exact
    projection onto B_1[x; eps] intersected with the box (``norms.project_l1``; clipping after the
    ball's projection is not it). No momentum. eta^(0) = eps (the stage's). Every
    max(floor(0.04 N), 1) steps (N the stage's steps) a sample checks the sparsity s = ||x_max - x||_0
    of its iterate of least loss against the last check's: topk becomes s / (1.5 d) (d the number of
    coordinates); where s shrank below 0.95 of it, eta returns to eps and the iterate restarts from
    x_max, elsewhere eta / 1.5; eta stays within [eps / 10, eps]. The first topk is 0.2 (s_0 = d), or with
    ``decreasing_eps`` s_0 / (1.5 d), s_0 the sparsity of the stage's start.

    ``decreasing_eps`` (AutoAttack's ``use_largereps``, on in its standard L1 version): the run's steps in
    three stages, ceil(0.3 N), ceil(0.3 N) and the rest, at budgets 3 eps, 2 eps, eps, each starting from
    the previous stage's x_max projected onto the stage's ball (the first from x + n, n standard normal,
    projected onto the 3 eps ball); only the last stage, inside eps, can find an adversarial (the
    earlier ones only move the start). Without it one stage at eps from x + n projected onto its ball.

    With ``quantize`` an iterate counts when its rounding *into the ball* (``norms.quantize_within``) is
    adversarial: 8-bit rounding of many moved pixels would leave the L1 ball.

    Cost: ``steps`` forward+backward passes per run (each stage: one at its start, one per step but the
    last, which is a forward), as the Linf / L2 APGD.
    """

    norm = "l1"
    default_eps = 10.0  # MNIST's L1 budget (threats.STANDARD_BUDGETS)
    eps: float
    steps: int
    quantize: bool

    def __init__(self, *args, decreasing_eps: bool = True, **kw) -> None:
        unused = [k for k in ("rho", "momentum") if k in kw]
        if unused:
            raise ValueError(f"{', '.join(unused)}: not an option of l1-APGD (its step size follows the "
                             "sparsity of x_max, without momentum)")
        super().__init__(*args, **kw)
        self.decreasing_eps = check_flag("decreasing_eps", decreasing_eps)
        if self.decreasing_eps and self.steps < 3:
            raise ValueError(f"steps must be >= 3 with decreasing_eps (3 stages of eps), got {self.steps}")

    def _project(self, v: Tensor, x: Tensor) -> Tensor:
        return project_l1(v, x, self.eps)

    def _rounded(self, v: Tensor, x: Tensor) -> Tensor:
        return quantize_within(v, x, self.eps, "l1")

    def _stages(self) -> list[tuple[float, int]]:
        """(budget, steps) of the run's stages (``decreasing_eps``: AutoAttack's 3 eps, 2 eps, eps)."""
        if not self.decreasing_eps:
            return [(self.eps, self.steps)]
        first = math.ceil(0.3 * self.steps)
        return [(3.0 * self.eps, first), (2.0 * self.eps, first), (self.eps, self.steps - 2 * first)]

    @staticmethod
    def _sparse_step(g: Tensor, topk: Tensor) -> Tensor:
        """sign(g) on the coordinates whose |g| reaches the (1 - topk) quantile, divided by their count."""
        a = g.abs().flatten(1)
        n = a.shape[1]
        at = ((1.0 - topk) * n).clamp(0, n - 1).long()
        threshold = a.sort(dim=1).values.gather(1, at[:, None])
        step = g.sign().flatten(1) * (a >= threshold)
        return (step / step.abs().sum(1, keepdim=True).clamp_min(1e-10)).view_as(g)

    def _attack(self, ctx: AttackContext, idx: Tensor, loss_t: Tensor | None, gen: torch.Generator,
                out: Tensor, out_f: Tensor, done: Tensor) -> None:
        x = ctx.x[idx]
        d = x[0].numel()
        stages = self._stages()
        cur = x + torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        for j, (eps, steps) in enumerate(stages):
            final = j == len(stages) - 1
            start = project_l1(cur, x, eps)
            s, logits = self._begin(ctx, idx, loss_t, start, eps)
            if self.decreasing_eps:
                s.sparsity = (start != x).flatten(1).sum(1).to(x.dtype)
                s.topk = s.sparsity / d / 1.5
            else:
                s.sparsity, s.topk = torch.full_like(s.f, float(d)), torch.full_like(s.f, 0.2)
            if final:
                s = self._retire(ctx, s, logits, out, done)
            every = max(int(0.04 * steps), 1)
            for k in range(steps):
                if s.idx.numel() == 0:
                    return
                nxt = project_l1(s.cur - view_as_batch(s.eta, s.x) * self._sparse_step(s.grad, s.topk), s.x, eps)
                logits = self._advance(ctx, s, nxt, grad=k + 1 < steps)
                if final:
                    s = self._retire(ctx, s, logits, out, done)
                if (k + 1) % every == 0 and k + 1 < steps:
                    self._check_sparsity(s, eps, d)
            cur = s.best
        self._keep_best(s, out, out_f)

    @staticmethod
    def _check_sparsity(s: _State, eps: float, d: int) -> None:
        """The checkpoint of l1-APGD: topk from x_max's sparsity; eta reset and restart where it shrank."""
        sparsity = (s.best != s.x).flatten(1).sum(1).to(s.eta.dtype)
        shrank = sparsity < 0.95 * s.sparsity
        s.topk, s.sparsity = sparsity / d / 1.5, sparsity
        s.eta = torch.where(shrank, torch.full_like(s.eta, eps), s.eta / 1.5).clamp(eps / 10, eps)
        s.cur = torch.where(view_as_batch(shrank, s.cur), s.best, s.cur)
        s.grad = torch.where(view_as_batch(shrank, s.cur), s.best_grad, s.grad)


class _Targeted(_APGD):
    """APGD-T: the targeted DLR loss toward each of the ``n_target_classes`` classes of highest clean
    logit (after the true class), one after another, each ``restarts`` times, on the samples not yet
    misclassified (AutoAttack: 9 targets, 1 restart, 100 steps). With explicit ``targets`` it attacks
    those (success: predicted as the target)."""

    default_loss = "dlr"

    def __init__(self, eps: float | None = None, steps: int = 100, n_target_classes: int = 9, **kw) -> None:
        super().__init__(eps=eps, steps=steps, **kw)
        self.n_target_classes = check_count("n_target_classes", n_target_classes)

    def check_model(self, model: nn.Module, logits: Tensor) -> None:
        """Before a suite runs (``run_suite``): the model has a class to target and enough for the loss."""
        if logits.shape[1] < 2:
            raise ValueError(f"{self.name} needs a model of at least 2 classes, got {logits.shape[1]}")
        y = logits.argmax(1)
        self.loss_fn(logits, y, logits.scatter(1, y[:, None], float("-inf")).argmax(1))  # dlr: >= 4 classes

    def _runs(self, ctx: AttackContext) -> list[Tensor | None]:
        if ctx.targets is not None:
            return [ctx.targets]
        logits = ctx.logits(ctx.x)
        ranked = logits.scatter(1, ctx.y[:, None], float("-inf")).argsort(dim=1, descending=True)
        k = min(self.n_target_classes, logits.shape[1] - 1)  # at most every other class
        return [ranked[:, i] for i in range(k)]


@register_attack("apgd_linf")
class APGDLinf(_Linf, _APGD):
    """APGD in Linf (``loss`` "ce" or "dlr"; default "ce" as AutoAttack's APGD-CE)."""


@register_attack("apgd_l2")
class APGDL2(_L2, _APGD):
    """APGD in L2 (``loss`` "ce" or "dlr"; default "ce")."""


@register_attack("apgd_t_linf")
class APGDTLinf(_Linf, _Targeted):
    """APGD-T in Linf (targeted DLR over the top ``n_target_classes`` classes)."""


@register_attack("apgd_t_l2")
class APGDTL2(_L2, _Targeted):
    """APGD-T in L2 (targeted DLR over the top ``n_target_classes`` classes)."""


@register_attack("apgd_l1")
class APGDL1(_L1, _APGD):
    """l1-APGD (sparse steps, the exact L1-ball-and-box projection; ``loss`` "ce" or "dlr", default "ce")."""


@register_attack("apgd_t_l1")
class APGDTL1(_L1, _Targeted):
    """l1-APGD-T (targeted DLR over the top ``n_target_classes`` classes; AutoAttack's L1 standard: 5)."""
