"""Classifiers taking pixels in [0, 1]: built-in nets, timm and torchvision, by name."""
from .factory import build_model, known_models, load_state_dict_safely
from .nets import C4, CifarCNN
from .normalize import Normalize, NormalizedModel

__all__ = ["build_model", "known_models", "load_state_dict_safely", "C4", "CifarCNN", "Normalize", "NormalizedModel"]
