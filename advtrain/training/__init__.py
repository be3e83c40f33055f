"""(Adversarial) training as a LightningModule, with exact resume and robustness metrics."""
from .inner_attack import adversarial_loss, build_inner_attack, clip_perturbation
from .module import AdversarialTrainingModule
from .robustness_metrics import RobustnessMetrics

__all__ = ["AdversarialTrainingModule", "RobustnessMetrics", "adversarial_loss", "build_inner_attack",
           "clip_perturbation"]
