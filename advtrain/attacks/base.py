"""The shared attack machinery: result type, input checks, model-state guard, gradient helper.

Every attack subclasses :class:`Attack` and implements :meth:`Attack._run`. The base class
validates inputs, puts the model in eval mode with frozen parameters (restoring both afterwards),
turns gradients on locally (so attacks work under a caller's ``no_grad``/``inference_mode``),
and computes the reported success mask and distortions from the returned images.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.graph import register_multi_grad_hook

from .losses import get_loss, is_adversarial
from ..nn.state import frozen_eval
from ..ops.checks import check_budget_fits, check_flag
from ..ops.norms import l2_norm, linf_norm, quantize as quantize_8bit

#: the option validators live in ``ops.checks`` (their one home); the model-state guard in ``nn.state``
__all__ = ["Attack", "AttackContext", "AttackResult", "BestTracker", "Family", "check_inputs", "check_label_range",
           "check_logits", "check_model", "frozen_eval", "success_on"]


class AttackResult:
    """Output of an attack on a batch.

    x_adv: adversarial images in [0, 1]; success: per-sample bool, ``model(x_adv)`` misclassifies
    (or hits the target); l2 / linf: per-sample distortion ``x_adv - x``; grads: number of gradient
    computations (forward+backward passes) the attack spent on the batch.

    ``success`` is measured on the returned images when first read (one forward pass, in the
    attack's model mode), so callers that only need the images (e.g. FGSM training) do not pay for
    it. Reading it after the model's parameters or buffers changed (an optimizer step, a train-mode
    BatchNorm forward) raises: the mask would describe another model.
    """

    def __init__(self, x_adv: Tensor, success: Tensor | Callable[[], Tensor], l2: Tensor, linf: Tensor,
                 grads: int, queries: int = 0) -> None:
        self.x_adv, self.l2, self.linf, self.grads, self.queries = x_adv, l2, linf, grads, queries
        self._success = success if isinstance(success, Tensor) else None
        self._measure = None if isinstance(success, Tensor) else success

    @property
    def success(self) -> Tensor:
        if self._success is None:
            assert self._measure is not None
            self._success, self._measure = self._measure().detach(), None
        return self._success

    def __repr__(self) -> str:
        return (f"AttackResult(batch={self.x_adv.shape[0]}, grads={self.grads}, "
                f"success={'pending' if self._success is None else self._success.float().mean().item()})")


def success_on(model: nn.Module, ctx: "AttackContext", x_adv: Tensor, eval_mode: bool) -> Callable[[], Tensor]:
    """A deferred measurement of ``is_adversarial(model(x_adv))`` that refuses to run on a changed model.

    Parameters' and buffers' version counters (bumped by every in-place update) are recorded now
    and compared when the measurement runs.
    """
    tensors = [*model.parameters(), *model.buffers()]
    versions = [t._version for t in tensors]

    def measure() -> Tensor:
        if [t._version for t in tensors] != versions:
            raise RuntimeError("the model changed after the attack ran (optimizer step or train-mode "
                               "forward); read AttackResult.success before updating the model")
        with frozen_eval(model, eval_mode), torch.no_grad():
            # a non-finite image is never a success (is_adversarial: nor a non-finite logit)
            return ctx.is_adv(model(x_adv)) & torch.isfinite(x_adv).flatten(1).all(dim=1)
    return measure


@dataclass
class AttackContext:
    """What :meth:`Attack._run` receives: the model, clean inputs, labels and optional targets.

    ``grads`` is measured, never declared: every forward pass through :meth:`forward` (or
    :meth:`loss_and_grad`) that builds a graph gets an autograd hook on its input and output
    (``register_multi_grad_hook``, mode "any"), and each backward pass (``backward`` or
    ``autograd.grad``) that reaches one of them counts one gradient computation, once per backward
    however many forward passes it runs through. The unit: one backward of the (sub)batch through the
    model; a forward of ``copies`` stacked copies of it (DeepFool's k candidates in one pass) counts
    ``copies``. An EOT model's draws are multiplied in by :class:`Attack` (``draws_per_call``).
    """

    model: nn.Module
    x: Tensor
    y: Tensor
    targets: Tensor | None
    loss_fn: Callable[..., Tensor]
    queries: int = 0
    checked: bool = False
    _grads: int = field(default=0, init=False, repr=False)
    _counted_task: int = field(default=-1, init=False, repr=False)

    @property
    def grads(self) -> int:
        """Backward passes through the model so far (measured by the hooks of :meth:`_count_backward`)."""
        return self._grads

    def _count_backward(self, tensors: tuple[Tensor, ...], copies: int = 1) -> None:
        """Count each later backward pass that reaches any of ``tensors`` (a forward's input and output)."""
        tensors = tuple(t for t in tensors if isinstance(t, Tensor) and t.requires_grad)
        if not tensors:
            return

        def count(_grads: object) -> None:
            # the backward's id: what register_multi_grad_hook's "any" mode itself keys on (once per backward)
            task = torch._C._current_graph_task_id()
            if task != self._counted_task:  # one backward through several forward passes counts once
                self._counted_task = task
                self._grads += copies
        register_multi_grad_hook(tensors, count, mode="any")

    def forward(self, x: Tensor, copies: int = 1) -> Tensor:
        """The model's logits; the first call also checks them (logits, not probabilities) and the
        labels' range against their width, before any loss is taken (no extra forward pass), and
        names the cause when it fails (images and model of another dtype, device, channel count).
        ``copies``: ``x`` stacks that many copies of the attacked (sub)batch (the count's unit)."""
        if self.checked:
            logits = self.model(x)
            self._count_backward((x, logits), copies)
            return logits
        try:
            logits = self.model(x)
        except RuntimeError as err:
            cause = explain_forward_failure(self.model, x)
            if cause is None:
                raise
            raise cause from err
        self._count_backward((x, logits), copies)
        return self._checked(logits, x.shape[0])

    def _checked(self, logits: Tensor, batch: int) -> Tensor:
        if not self.checked:
            check_logits(logits, batch)
            check_label_range(self.y, self.targets, logits.shape[1])
            self.checked = True
        return logits

    def logits(self, x: Tensor) -> Tensor:
        """Forward pass without gradient; counts one query."""
        self.queries += 1
        with torch.no_grad():
            return self.forward(x)

    def loss_and_grad(self, x: Tensor, loss_fn: Callable[..., Tensor] | None = None, copies: int = 1,
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """One forward+backward: returns (logits, per-sample loss, d loss / d x).

        Gradients are taken on the input only (``torch.autograd.grad``); no parameter gradient
        accumulates. Counts one gradient computation, ``copies`` for ``copies`` stacked copies of the
        batch (an EOT model's draws: see ``draws_per_call``).
        """
        x = x.detach().requires_grad_(True)
        logits, loss = self._loss(x, loss_fn or self.loss_fn, copies)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return logits.detach(), loss.detach(), grad.detach()

    def is_adv(self, logits: Tensor) -> Tensor:
        return is_adversarial(logits, self.y, self.targets)

    # EOT (advtrain.defenses.eot; Athalye et al. 2018, AutoAttack's rand version) ------------------------
    def _loss(self, x: Tensor, loss_fn: Callable[..., Tensor], copies: int = 1) -> tuple[Tensor, Tensor]:
        """(logits, per-sample loss) at ``x``. For a model seen through EOT (it has ``eot_draws(x)``: one
        logits tensor per random draw) the loss is the mean of the per-draw losses, so its gradient is
        the mean of the per-draw loss gradients, and the logits are the draws' mean (its forward)."""
        draws = getattr(self.model, "eot_draws", None)
        if draws is None:
            logits = self.forward(x, copies)
            return logits, loss_fn(logits, self.y, self.targets)
        per_draw = draws(x)
        self._count_backward((x, *per_draw), copies)
        logits = self._checked(torch.stack(per_draw).mean(dim=0), x.shape[0])
        return logits, torch.stack([loss_fn(z, self.y, self.targets) for z in per_draw]).mean(dim=0)


def draws_per_call(model: nn.Module) -> int:
    """Forward(+backward) passes one call of ``model`` costs: ``eot_samples`` for a model seen through
    EOT (``advtrain.defenses.eot.EOT``: the mean over that many random draws), else 1. Attacks count
    calls; the reported ``grads`` and ``queries`` are multiplied by this, so every draw is counted."""
    return int(getattr(model, "eot_samples", 1))


def check_model(model: object) -> None:
    """The model must be an ``nn.Module`` (the attacks switch it to eval mode and freeze its
    parameters for the call)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}; wrap a plain function "
                        "in a module whose forward calls it")


def check_inputs(x: Tensor, y: Tensor, targets: Tensor | None, num_classes: int | None) -> None:
    """Clear errors for bad attack input: type, rank, empty batch, range, NaN, label type, shape and
    range. Shapes and dtypes are free; the range and NaN checks read two numbers of ``x``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        what = f"{x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor of images in [0, 1], got {what}")
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images NCHW (4-D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}): nothing to attack")
    if x.numel() == 0:
        raise ValueError(f"x holds empty images (shape {tuple(x.shape)})")
    for name, lab in (("y", y), ("targets", targets)):
        if lab is not None and not isinstance(lab, Tensor):
            raise TypeError(f"{name} must be a tensor of integer labels, got {type(lab).__name__}; "
                            f"pass torch.as_tensor({name})")
    lo, hi = float(x.min()), float(x.max())
    if lo != lo or hi != hi:
        raise ValueError("x contains NaN")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x must lie in [0, 1] (pixel space), got values in [{lo:.4g}, {hi:.4g}]; "
                         "move normalisation inside the model (advtrain.models.Normalize)")
    for name, lab in (("y", y), ("targets", targets)):
        if lab is None:
            continue
        if lab.dim() != 1 or lab.shape[0] != x.shape[0] or lab.is_floating_point() or lab.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of shape [{x.shape[0]}], "
                             f"got {lab.dtype} {tuple(lab.shape)}")
        if lab.device != x.device:
            raise ValueError(f"{name} is on {lab.device}, the images on {x.device}: move them to one device")
    if num_classes is not None:
        check_label_range(y, targets, num_classes)
    if targets is not None and bool((targets == y).any()):
        raise ValueError("targets must differ from the true labels y")


def explain_forward_failure(model: nn.Module, x: Tensor) -> Exception | None:
    """The cause of a failed first forward pass in one line, when it is a mismatch between the
    images and the model (device, dtype, channels); None otherwise (the model's own error stands)."""
    ref = next((t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)
    if ref is not None and ref.device != x.device:
        return ValueError(f"the images are on {x.device} but the model is on {ref.device}: move one "
                          f"(model.to({str(x.device)!r}) or images.to({str(ref.device)!r}))")
    if ref is not None and ref.dtype != x.dtype:
        return TypeError(f"the images are {x.dtype} but the model's weights are {ref.dtype}: convert one "
                         f"(model.to({x.dtype}) or images.to({ref.dtype}))")
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is not None and conv.in_channels != x.shape[1]:
        return ValueError(f"the images have {x.shape[1]} channels, the model's first convolution takes "
                          f"{conv.in_channels} (shape {tuple(x.shape)})")
    return None


def check_label_range(y: Tensor, targets: Tensor | None, num_classes: int) -> None:
    """Labels (and targets) must lie in [0, num_classes)."""
    for name, lab in (("y", y), ("targets", targets)):
        if lab is not None and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(f"{name} out of range [0, {num_classes}): "
                             f"min {int(lab.min())}, max {int(lab.max())}")


def check_logits(logits: Tensor, batch: int | None = None) -> None:
    """Refuse outputs that are not a [batch, classes] tensor of logits (a tuple, a vector, another
    batch size; probabilities: rows in [0, 1] summing to 1)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model must return a logits tensor [B, classes], got {type(logits).__name__}; "
                        "wrap it to return the logits only")
    if logits.dim() != 2 or (batch is not None and logits.shape[0] != batch):
        raise ValueError(f"the model must return logits of shape [{batch or 'B'}, classes], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"the model must return floating-point logits, got {logits.dtype}")
    if logits.shape[1] > 1 and bool((logits >= 0).all()) and bool((logits <= 1).all()):
        sums = logits.sum(dim=1)
        if torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ValueError("the model seems to return probabilities (rows sum to 1); "
                             "attacks need logits: remove the final softmax")


class Family(str, Enum):
    """What an attack is given and what it minimises (foolbox's fixed-budget vs minimization split).

    The values are what results.json records.
    """

    DISTORTION = "distortion"      #: a budget eps, maximise success within it
    SUCCESS = "success"            #: reach success, minimise the distortion
    UNRESTRICTED = "unrestricted"  #: neither budget nor norm (e.g. semantic or patch attacks)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Attack:
    """Base of every attack. Subclasses implement ``_run``; ``register_attack`` sets ``name``.

    Args:
        quantize: return 8-bit images (on the 1/255 grid); how each attack honours this is
            attack-specific (rounding each step for DDN/BP, at the end for the others).
        loss: attacker loss name ("ce", "ce_difference", "margin"; see ``losses.py``).
        eval_mode: run the model in eval mode (default); False keeps the caller's mode.
    """

    name: ClassVar[str] = "attack"
    #: :class:`Family`: DISTORTION (budget eps: FGSM, I-FGSM, PGD) or SUCCESS (minimal distortion: C&W,
    #: DDN, BP); a subclass may give the string value, converted (and checked) at class creation
    family: ClassVar[Family] = Family.DISTORTION
    #: True when the attack rounds every iterate to 8 bits with ``quantize=True`` (DDN, BP, C&W's best
    #: rounded iterate): the evaluation then runs it once per variant instead of rounding its output
    rounds_iterates: ClassVar[bool] = False
    #: norm in which the budget ``eps`` of a distortion-targeted attack is measured ("l2" or "linf")
    norm: ClassVar[str] = "l2"
    default_loss: ClassVar[str] = "ce"
    #: False for untargeted-only attacks (they refuse ``targets`` with a ValueError naming "untargeted")
    supports_targets: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        try:
            cls.family = Family(cls.family)
        except ValueError:
            raise ValueError(f"{cls.__name__}.family must be one of {', '.join(f.value for f in Family)}, "
                             f"got {cls.family!r}") from None

    #: False for score-based attacks (Square): they never take a gradient and report ``grads = 0``
    uses_gradients: ClassVar[bool] = True

    def __init__(self, *, quantize: bool = False, loss: str | None = None, eval_mode: bool = True) -> None:
        check_flag("quantize", quantize)
        check_flag("eval_mode", eval_mode)
        self.quantize = quantize
        self.loss = loss or self.default_loss
        self.loss_fn = get_loss(self.loss)
        self.eval_mode = eval_mode

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "loss_fn")
        return f"{type(self).__name__}({opts})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, targets: Tensor | None = None) -> AttackResult:
        """Attack ``model`` on clean images ``x`` (in [0, 1]) with labels ``y``."""
        check_model(model)
        check_inputs(x, y, targets, None)  # before any forward: type, rank, range, NaN, label shape
        eps = getattr(self, "eps", None)
        if self.family is Family.DISTORTION and isinstance(eps, float):
            check_budget_fits(eps, self.norm, x[0].numel())
        with frozen_eval(model, self.eval_mode), torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone() if x.is_inference() else x.detach()
            y = y.detach().clone() if y.is_inference() else y.detach()
            if targets is not None:
                targets = targets.detach().clone() if targets.is_inference() else targets.detach()
            ctx = AttackContext(model, x, y, targets, self.loss_fn)
            x_adv = self._run(ctx).detach()
            delta = x_adv - x
            draws = draws_per_call(model)
            # success is always measured on the returned images, when first read
            return AttackResult(x_adv=x_adv, success=success_on(model, ctx, x_adv, self.eval_mode),
                                l2=l2_norm(delta), linf=linf_norm(delta), grads=ctx.grads * draws,
                                queries=ctx.queries * draws)

    def _run(self, ctx: AttackContext) -> Tensor:
        """Return the adversarial images (in [0, 1])."""
        raise NotImplementedError

    def _finish(self, x_adv: Tensor) -> Tensor:
        """Final quantization when asked (distortion-targeted attacks)."""
        return quantize_8bit(x_adv) if self.quantize else x_adv


class BestTracker:
    """Keeps, per sample, the successful iterate of least distortion (thesis 5.2.3).

    ``distance`` measures it (per-sample L2 by default; ``linf_norm`` for Linf attacks).
    Samples never found adversarial keep the clean image and are marked failed.
    """

    def __init__(self, x: Tensor, distance: Callable[[Tensor], Tensor] = l2_norm) -> None:
        self.x = x
        self.distance = distance
        self.best = x.clone()
        self.best_l2 = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)  # in `distance`
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(self, x_cand: Tensor, is_adv: Tensor) -> None:
        l2 = self.distance(x_cand - self.x)
        better = is_adv & (l2 < self.best_l2)
        self.best = torch.where(better.view(-1, *([1] * (x_cand.dim() - 1))), x_cand, self.best)
        self.best_l2 = torch.where(better, l2, self.best_l2)
        self.found |= is_adv

    def result(self) -> tuple[Tensor, Tensor]:
        return self.best, self.found
