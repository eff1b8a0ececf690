"""Evaluation metrics (see ../shared/reference/METRICS.md for the conventions).

* identifiability: :func:`mcc`, :func:`mcc_both`, :func:`block_mcc`, :func:`block_r2`, :func:`linear_r2`
* clustering by block: :func:`cluster_labels`, :func:`cluster_scores`, :func:`block_cluster_scores`
* response prediction: :func:`mean_log_expression`, :func:`rank_genes`, :func:`prediction_scores`,
  :func:`additive_baseline`
* independence: :func:`hsic`, :func:`hsic_torch`
* held-out likelihood and treatment targets (sVAE): :func:`iwelbo`, :func:`likelihood_bounds`,
  :func:`likelihood_table`, :func:`target_scores`
* reference representations and neighbours: :func:`log_normalize`, :func:`pca_embedding`,
  :func:`knn_accuracy`
* perturbation response (PerturBench and Systema conventions): :func:`pearson_delta`,
  :func:`cosine_logfc`, :func:`rmse`, :func:`normalized_rank`, :func:`energy_distance`, :func:`mmd`,
  :func:`deg_direction`, :func:`deg_overlap`
* posterior predictive checks: :func:`posterior_predictive_check`, :func:`gene_statistics`,
  :func:`ppc_compare`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each name is imported from its module on first use (PEP 562): scikit-learn and scipy.stats, which
# most metrics need, cost about a second to import, and ``import fcrkit`` should not pay it.
_MODULES = {
    "_validation": ["OptionalDependencyError"],
    "baselines": ["log_normalize", "pca_embedding"],
    "clustering": ["block_cluster_scores", "cluster_labels", "cluster_scores"],
    "identifiability": ["MCCResult", "block_mcc", "block_r2", "linear_r2", "mcc", "mcc_both"],
    "independence": ["HSICResult", "hsic", "hsic_torch"],
    "likelihood": ["iwelbo", "likelihood_bounds", "likelihood_table"],
    "neighbors": ["knn_accuracy"],
    "ppc": ["PPCResult", "gene_statistics", "posterior_predictive_check", "ppc_compare"],
    "prediction": ["additive_baseline", "mean_log_expression", "prediction_scores", "rank_genes"],
    "response": ["cosine_logfc", "deg_direction", "deg_overlap", "energy_distance", "mmd", "normalized_rank",
                 "pearson_delta", "rmse"],
    "targets": ["target_scores"],
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from fcrkit.metrics._validation import OptionalDependencyError
    from fcrkit.metrics.baselines import log_normalize, pca_embedding
    from fcrkit.metrics.clustering import block_cluster_scores, cluster_labels, cluster_scores
    from fcrkit.metrics.identifiability import MCCResult, block_mcc, block_r2, linear_r2, mcc, mcc_both
    from fcrkit.metrics.independence import HSICResult, hsic, hsic_torch
    from fcrkit.metrics.likelihood import iwelbo, likelihood_bounds, likelihood_table
    from fcrkit.metrics.neighbors import knn_accuracy
    from fcrkit.metrics.ppc import PPCResult, gene_statistics, posterior_predictive_check, ppc_compare
    from fcrkit.metrics.prediction import additive_baseline, mean_log_expression, prediction_scores, rank_genes
    from fcrkit.metrics.response import (
        cosine_logfc,
        deg_direction,
        deg_overlap,
        energy_distance,
        mmd,
        normalized_rank,
        pearson_delta,
        rmse,
    )
    from fcrkit.metrics.targets import target_scores


def __getattr__(name: str) -> Any:
    """Import a metric's module when the metric is first asked for."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__all__ = [  # the names of _MODULES (tests/test_import.py checks they agree)
    "HSICResult",
    "MCCResult",
    "OptionalDependencyError",
    "PPCResult",
    "additive_baseline",
    "block_cluster_scores",
    "block_mcc",
    "block_r2",
    "cluster_labels",
    "cluster_scores",
    "cosine_logfc",
    "deg_direction",
    "deg_overlap",
    "energy_distance",
    "gene_statistics",
    "hsic",
    "hsic_torch",
    "iwelbo",
    "knn_accuracy",
    "likelihood_bounds",
    "likelihood_table",
    "linear_r2",
    "log_normalize",
    "mcc",
    "mcc_both",
    "mean_log_expression",
    "mmd",
    "normalized_rank",
    "pca_embedding",
    "pearson_delta",
    "posterior_predictive_check",
    "ppc_compare",
    "prediction_scores",
    "rank_genes",
    "rmse",
    "target_scores",
]
