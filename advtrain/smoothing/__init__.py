"""Graph-Laplacian smoothing guided by an image (thesis 4.2, eq. 4.1-4.5) and bilateral filtering (4.5)."""
from .bilateral import bilateral_filter
from .graph import ImageGraph, image_graph
from .smoother import LaplacianSmoother, check_smoothing_options, default_alpha

__all__ = ["LaplacianSmoother", "ImageGraph", "image_graph", "bilateral_filter", "default_alpha",
           "check_smoothing_options"]
