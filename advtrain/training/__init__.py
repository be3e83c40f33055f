"""(Adversarial) training as a LightningModule."""
from .module import AdversarialTrainingModule

__all__ = ["AdversarialTrainingModule"]
