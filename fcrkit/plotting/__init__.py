"""Figures written to files (PNG by default): no display or pyplot state is needed.

* training: :func:`plot_training_curves` (one panel per loss term), :func:`plot_histories`
  (one term, one line per run);
* latent blocks: :func:`plot_blocks` (2-D views coloured by labels; UMAP when ``umap-learn`` is
  installed, PCA otherwise) and :func:`embed_2d`;
* scores: :func:`plot_block_r2` (the block-R² heat map), :func:`plot_benchmark` (the benchmark table);
* prediction: :func:`plot_prediction` (predicted vs true mean expression, top DEGs marked);
* posterior predictive checks: :func:`plot_ppc` (per-gene statistics of model draws against the data).

Each function returns the path it wrote. ``fcrkit demo`` and ``fcrkit benchmark`` write them.
"""

from fcrkit.plotting.curves import loss_terms, plot_histories, plot_training_curves
from fcrkit.plotting.embeddings import embed_2d, plot_blocks
from fcrkit.plotting.ppc import plot_ppc
from fcrkit.plotting.prediction import plot_prediction
from fcrkit.plotting.scores import plot_benchmark, plot_block_r2

__all__ = [
    "embed_2d",
    "loss_terms",
    "plot_benchmark",
    "plot_block_r2",
    "plot_blocks",
    "plot_histories",
    "plot_ppc",
    "plot_prediction",
    "plot_training_curves",
]
