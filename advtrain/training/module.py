"""The LightningModule for clean and adversarial training (thesis 3.2.2, 5.5)."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import build_model
from .awp import WeightPerturbation
from .inner_attack import build_inner_attack, clip_perturbation
from .objectives import build_objective
from .resume import gather_rng_states, own_rng_state, resumable_loader, set_rng_state
from .robustness_metrics import RobustnessMetrics
from .train_metrics import TrainMetrics

#: checkpoint key of what this module adds (RNG states, identity of the model)
CKPT_KEY = "advtrain"


class NonFiniteLossError(ValueError):
    """The training loss became NaN/Inf: the run stops with one line instead of training on."""


class AdversarialTrainingModule(pl.LightningModule):
    """Wraps a classifier from the model factory and an inner-loop attack from the registry.

    Per batch (once ``current_epoch >= clean_epochs``): craft adversarial examples with the model
    in eval mode and frozen parameters (``attack_train_mode=True`` keeps train-mode BN), optionally
    clip their L2 perturbation to ``max_norm`` (success-targeted attacks, as Rony et al. 2019 do),
    then minimise the objective ``loss`` (:mod:`.objectives`): ``mix`` (default) is
    ``clean_weight * CE(x) + adv_weight * CE(x_adv)``, ``adv_weight=0.5`` Goodfellow's mixed loss, ``1.0``
    Madry's adversarial-only loss; ``trades``, ``mart``, ``gradalign`` with their ``loss_options``.
    ``awp_gamma`` adds adversarial weight perturbation (:mod:`.awp`) on top of any of them.
    ``clean_epochs > 0`` gives clean pre-training then adversarial fine-tuning in one run (thesis 5.5).

    Validation and test report clean accuracy, accuracy under ``val_pgd`` at a fixed budget, and
    the distortion statistics of ``val_attack`` on ``val_subset`` evenly spaced images (see
    :class:`RobustnessMetrics`). Checkpoints carry the RNG states; the training loader is replaced
    by one whose order depends on (seed, epoch) only, so a run resumed mid-epoch is exact.

    Args:
        model: model factory name (``c4``, ``cifar_cnn``, ``timm:<name>``, ``torchvision:<name>``).
        attack: registry name of the inner-loop attack (``fgsm``, ``pgd_linf``, ``pgd_l2``, ``ddn``,
            ``bp``, ...) or None for clean training; ``attack_options`` its options (20 steps when
            unspecified for iterative attacks).
        adv_weight: mix ratio in [0, 1]; ``clean_weight`` defaults to ``1 - adv_weight`` (loss ``mix`` only).
        loss: training objective, ``mix``, ``trades`` (options ``beta``, 6), ``mart`` (``beta``, 6) or
            ``gradalign`` (``lam``, 0.2); ``loss_options`` its options. ``trades`` maximizes its KL term with
            the configured PGD (:func:`.trades_attack.kl_variant`).
        awp_gamma: AWP's relative weight-perturbation size in (0, 1) (5e-3 in Wu et al. 2020), None: no AWP.
        val_attack, val_attack_options: success-targeted attack measured at validation (20 steps
            by default); ``val_subset`` images; ``d_upp``: distortion of P_upp (thesis Table 5.2).
        val_pgd, val_pgd_options: distortion-targeted attack at a fixed budget (default eps = d_upp).
        seed: seed of the training data order (exact resume).

    The optimizer and learning-rate schedule are LightningCLI's top-level ``optimizer`` and
    ``lr_scheduler`` options of train.py (see :meth:`configure_optimizers` for the default).
    """

    def __init__(self, model: str = "c4", num_classes: int = 10, pretrained: bool = False,
                 weights: str | None = None, attack: str | None = None,
                 attack_options: dict[str, Any] | None = None, adv_weight: float = 0.5,
                 clean_weight: float | None = None, clean_epochs: int = 0, max_norm: float | None = None,
                 attack_train_mode: bool = False, val_attack: str | None = "ddn",
                 val_attack_options: dict[str, Any] | None = None, val_subset: int = 200,
                 val_pgd: str | None = "pgd_l2", val_pgd_options: dict[str, Any] | None = None,
                 d_upp: float = 2.0, seed: int = 0, exact_resume: bool = True, loss: str = "mix",
                 loss_options: dict[str, Any] | None = None, awp_gamma: float | None = None) -> None:
        super().__init__()
        self.objective = build_objective(loss, loss_options, adv_weight, clean_weight)
        if attack is None and loss != "mix":
            raise ValueError(f"loss {loss!r} needs an inner attack: set model.attack (e.g. pgd_linf)")
        self.awp = WeightPerturbation(awp_gamma) if awp_gamma is not None else None
        if self.awp is not None and attack is None:
            raise ValueError("awp_gamma needs an inner attack (AWP perturbs the weights against the adversarial "
                             "loss): set model.attack")
        if clean_epochs < 0:
            raise ValueError(f"clean_epochs must be >= 0, got {clean_epochs}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be > 0 (or null for no clipping), got {max_norm}")
        if not d_upp > 0:
            raise ValueError(f"d_upp must be > 0, got {d_upp}")
        self.save_hyperparameters()
        self.model = build_model(model, num_classes=num_classes, pretrained=pretrained, weights=weights)
        self.attack = self.objective.inner_attack(
            build_inner_attack(attack, attack_options, eval_mode=not attack_train_mode)) if attack else None
        pgd = build_inner_attack(val_pgd, {"eps": d_upp, **(val_pgd_options or {})}) if val_pgd else None
        val_att = build_inner_attack(val_attack, val_attack_options) if val_attack else None
        self.val_metrics = RobustnessMetrics(num_classes, pgd, val_att, val_subset, d_upp)
        self.test_metrics = RobustnessMetrics(num_classes, pgd, val_att, val_subset, d_upp)
        self.train_metrics = TrainMetrics()
        self._resume_rng: list[dict] | dict | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ---------------------------------------------------------------- training
    @property
    def adversarial_now(self) -> bool:
        """True once clean pre-training (``clean_epochs``) is over and an attack is configured."""
        return self.attack is not None and self.current_epoch >= self.hparams.clean_epochs

    def craft(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Adversarial examples (detached; no parameter gradient) and their attack success mask."""
        res = self.attack(self.model, x, y)
        x_adv = clip_perturbation(res.x_adv, x, self.hparams.max_norm)
        return x_adv.detach(), res.success

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        h = self.hparams
        metrics = self.train_metrics
        if self.adversarial_now:
            x_adv, success = self.craft(x, y)
            metrics.adv_l2.update((x_adv - x).flatten(1).norm(dim=1))
            metrics.adv_success.update(success.float())
            self.log("train/adv_l2", metrics.adv_l2, on_step=False, on_epoch=True)
            self.log("train/adv_success", metrics.adv_success, on_step=False, on_epoch=True)
            if self.awp is not None:
                self.awp.perturb(self.model, lambda: self.objective(self.model, x, x_adv, y)[0])
            loss, logits = self.objective(self.model, x, x_adv, y)
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        if not bool(torch.isfinite(loss)):  # diverged (or corrupted weights/data): stop, save nothing
            raise NonFiniteLossError(f"training stopped: the loss is {float(loss.detach())} at epoch "
                                     f"{self.current_epoch}, step {self.global_step}; lower the learning rate or "
                                     "check the data and weights")
        self.log("train/loss", loss, prog_bar=True)
        metrics.acc.update((logits.detach().argmax(1) == y).float())
        self.log("train/acc", metrics.acc, on_step=False, on_epoch=True)
        return loss

    def on_after_backward(self) -> None:
        """AWP: the gradient was taken at w + v; put w back (exactly) before the optimizer steps."""
        if self.awp is not None:
            self.awp.restore()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam, lr 1e-3 (thesis 3.2.2) when used outside train.py; train.py replaces it by LightningCLI's
        ``optimizer`` / ``lr_scheduler`` options (``--optimizer SGD --optimizer.lr 0.01``, configs/*.yaml)."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    # ---------------------------------------------------------- validation/test
    def _evaluate(self, metrics: RobustnessMetrics, x: Tensor, y: Tensor) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # random starts must not move the training RNG
            torch.manual_seed(self.hparams.seed)
            metrics.update(self.model, x, y)

    def _log_metrics(self, metrics: RobustnessMetrics, prefix: str) -> None:
        values = metrics.compute()  # torchmetrics syncs the states across processes
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, prog_bar=False)
        metrics.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(self.val_metrics, *batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(self.test_metrics, *batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()
        self.val_metrics.set_split_size(_split_size(self.trainer.val_dataloaders))

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_metrics.set_split_size(_split_size(self.trainer.test_dataloaders))

    # --------------------------------------------------------------- resume
    def setup(self, stage: str) -> None:
        """Give the training loader an order that depends on (seed, epoch) only (exact resume)."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or not self.hparams.exact_resume or dm is None or getattr(dm, "_advtrain_wrapped", False):
            return
        make_loader = dm.train_dataloader

        def progress() -> tuple[int, int | float]:
            return (self.trainer.fit_loop.epoch_loop.batch_progress.total.ready,
                    self.trainer.limit_train_batches)

        dm.train_dataloader = lambda: resumable_loader(make_loader(), self.hparams.seed, progress)
        dm._advtrain_wrapped = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Model identity and every process' RNG state (Lightning runs this hook on all ranks and
        writes rank 0's dict, so the states are gathered into it)."""
        checkpoint[CKPT_KEY] = {"rng": gather_rng_states(), "model": self.hparams.model,
                                "num_classes": self.hparams.num_classes,
                                "train_metrics": self.train_metrics.gathered_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model (clear error); keep its RNG state for training."""
        saved = checkpoint.get(CKPT_KEY, {})
        ours = {"model": self.hparams.model, "num_classes": self.hparams.num_classes}
        theirs = {k: saved.get(k, checkpoint.get("hyper_parameters", {}).get(k)) for k in ours}
        if theirs != ours:
            raise ValueError(f"checkpoint is of another model ({theirs}), this run trains {ours}: "
                             "resume with the same --model.model and --model.num_classes")
        own = self.state_dict()
        bad = [k for k, v in checkpoint.get("state_dict", {}).items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in checkpoint.get("state_dict", {})]
        if bad or missing:
            raise ValueError(f"checkpoint weights do not fit model {self.hparams.model!r}: "
                             f"{len(bad)} tensors of other shapes ({bad[:3]}), {len(missing)} missing ({missing[:3]})")
        self._resume_rng = saved.get("rng")  # per rank; this process' entry is picked when training starts
        self._resume_train_metrics = saved.get("train_metrics")

    def on_train_start(self) -> None:
        if self._resume_rng is not None:  # the latest point before the first resumed training batch
            set_rng_state(own_rng_state(self._resume_rng))
            self._resume_rng = None
        if getattr(self, "_resume_train_metrics", None) is not None:  # the epoch's metrics so far
            self.train_metrics.load_gathered_state(self._resume_train_metrics)
            self._resume_train_metrics = None


def _split_size(loaders: Any) -> int | None:
    """Number of images of an evaluation split (its first loader's dataset), None if unknown."""
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
