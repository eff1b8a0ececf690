"""Evaluation metrics (see ../shared/reference/METRICS.md for the conventions)."""

from fcrkit.metrics.baselines import log_normalize, pca_embedding
from fcrkit.metrics.identifiability import linear_r2
from fcrkit.metrics.neighbors import knn_accuracy

__all__ = ["knn_accuracy", "linear_r2", "log_normalize", "pca_embedding"]
