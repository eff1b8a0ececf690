"""fcrkit: composable disentangled generative models of single-cell perturbation data."""

__version__ = "0.1.0"
