"""advtrain: adversarial training and robustness evaluation for image classifiers."""
__version__ = "0.1.0"
