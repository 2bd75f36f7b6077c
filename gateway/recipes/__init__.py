"""Launch recipes and the GPU sizing estimator (sizing.estimate; architectures.resolve)."""

from gateway.recipes.architectures import Architecture, SizingError, resolve
from gateway.recipes.sizing import Estimate, SizingRequest, estimate

__all__ = ["Architecture", "Estimate", "SizingError", "SizingRequest", "estimate", "resolve"]
