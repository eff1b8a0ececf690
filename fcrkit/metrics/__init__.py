"""Evaluation metrics (see ../shared/reference/METRICS.md for the conventions).

* identifiability: :func:`mcc`, :func:`mcc_both`, :func:`block_mcc`, :func:`block_r2`, :func:`linear_r2`
* clustering by block: :func:`cluster_labels`, :func:`cluster_scores`, :func:`block_cluster_scores`
* response prediction: :func:`mean_log_expression`, :func:`rank_genes`, :func:`prediction_scores`,
  :func:`additive_baseline`; on plain arrays (PerturBench / Systema / pertpy conventions):
  :func:`pearson_delta`, :func:`cosine_logfc`, :func:`rmse`, :func:`normalized_rank`,
  :func:`energy_distance`, :func:`mmd`, :func:`deg_direction`, :func:`deg_overlap`
* independence: :func:`hsic`, :func:`hsic_torch`
* held-out likelihood and treatment targets (sVAE): :func:`iwelbo`, :func:`likelihood_bounds`,
  :func:`likelihood_table`, :func:`target_scores`
* posterior predictive checks (scvi-tools' criticism): :func:`posterior_predictive_check`,
  :func:`ppc_compare`, :func:`gene_statistics`
* reference representations and neighbours: :func:`log_normalize`, :func:`pca_embedding`,
  :func:`knn_accuracy`
"""

from fcrkit.metrics._validation import OptionalDependencyError
from fcrkit.metrics.baselines import log_normalize, pca_embedding
from fcrkit.metrics.clustering import block_cluster_scores, cluster_labels, cluster_scores
from fcrkit.metrics.identifiability import MCCResult, block_mcc, block_r2, linear_r2, mcc, mcc_both
from fcrkit.metrics.independence import HSICResult, hsic, hsic_torch
from fcrkit.metrics.likelihood import iwelbo, likelihood_bounds, likelihood_table
from fcrkit.metrics.neighbors import knn_accuracy
from fcrkit.metrics.prediction import additive_baseline, mean_log_expression, prediction_scores, rank_genes
from fcrkit.metrics.targets import target_scores

__all__ = [
    "HSICResult",
    "MCCResult",
    "OptionalDependencyError",
    "additive_baseline",
    "block_cluster_scores",
    "block_mcc",
    "block_r2",
    "cluster_labels",
    "cluster_scores",
    "hsic",
    "hsic_torch",
    "knn_accuracy",
    "linear_r2",
    "log_normalize",
    "mcc",
    "mcc_both",
    "mean_log_expression",
    "pca_embedding",
    "prediction_scores",
    "rank_genes",
]
__all__ += ["iwelbo", "likelihood_bounds", "likelihood_table", "target_scores"]
from fcrkit.metrics.response import (  # noqa: E402
    cosine_logfc,
    deg_direction,
    deg_overlap,
    energy_distance,
    mmd,
    normalized_rank,
    pearson_delta,
    rmse,
)

__all__ += ["cosine_logfc", "deg_direction", "deg_overlap", "energy_distance", "mmd", "normalized_rank",
            "pearson_delta", "rmse"]
from fcrkit.metrics.ppc import PPCResult, gene_statistics, posterior_predictive_check, ppc_compare  # noqa: E402

__all__ += ["PPCResult", "gene_statistics", "posterior_predictive_check", "ppc_compare"]
