"""Posterior predictive checks: do counts drawn from a fitted model look like the data, gene by gene?

The anchor is scvi-tools' ``criticism`` (``PosteriorPredictiveCheck``): draw counts for the observed
cells from the model (each cell encoded, a latent drawn from its posterior, counts drawn from the
likelihood with the cell's own labels and library), and compare per-gene summaries of the draws with
those of the observed counts. Statistics per gene, over cells, on raw counts:

* ``mean``; ``variance`` (ddof=1); ``cv`` = standard deviation / mean (0 for a gene with mean 0);
* ``zero_fraction``: the fraction of cells with a zero count.

Per statistic the check reports, across genes, the Pearson and Spearman correlations of model against
data (``scipy.stats``) and the mean absolute error (for ``mean``, ``variance`` and ``cv`` on ``log1p``
of the values, so that highly expressed genes do not dominate; for ``zero_fraction`` on the fractions).
The summary ``score`` is the mean of the four MAEs (0 is a perfect model; lower is better). Not the
correlations: a Poisson model of overdispersed counts orders the genes by variance as well as a negative
binomial one does, while its variances are far too small, which only the errors show. With several
draws the statistics are averaged over the draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from fcrkit.errors import ConfigError, DataError

__all__ = ["PPCResult", "STATISTICS", "gene_statistics", "posterior_predictive_check", "ppc_compare"]

#: The per-gene statistics, in the order reported.
STATISTICS = ("mean", "variance", "cv", "zero_fraction")


@dataclass
class PPCResult:
    """A posterior predictive check.

    Attributes:
        genes: per gene, ``<statistic>_data`` and ``<statistic>_model`` for every statistic.
        table: per statistic (rows), ``pearson``, ``spearman`` and ``mae`` of model against data.
        score: the mean of the ``mae`` column (0 is perfect).
        n_samples: the number of draws averaged.
    """

    genes: pd.DataFrame
    table: pd.DataFrame
    score: float
    n_samples: int


def gene_statistics(counts: Any) -> pd.DataFrame:
    """Per gene (rows): ``mean``, ``variance`` (ddof=1), ``cv`` and ``zero_fraction`` of a cells x genes matrix."""
    x = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise DataError(f"gene_statistics: counts must be a cells x genes matrix with at least 2 cells, got shape "
                        f"{x.shape}.")
    mean = x.mean(axis=0)
    variance = x.var(axis=0, ddof=1)
    cv = np.divide(np.sqrt(variance), mean, out=np.zeros_like(mean), where=mean > 0)
    return pd.DataFrame({"mean": mean, "variance": variance, "cv": cv, "zero_fraction": (x == 0).mean(axis=0)})


def ppc_compare(data: Any, draws: list[Any], gene_names: Any = None) -> PPCResult:
    """Compare the per-gene statistics of observed counts with those of model draws (see the module doc)."""
    if not draws:
        raise ConfigError("ppc_compare: need at least one draw from the model.")
    observed = gene_statistics(data)
    drawn = [gene_statistics(d) for d in draws]
    if any(d.shape != observed.shape for d in drawn):
        raise DataError(f"ppc_compare: every draw must have the data's genes ({observed.shape[0]}).")
    model = sum(drawn) / len(drawn)
    genes = pd.DataFrame({f"{s}_{side}": frame[s].to_numpy() for s in STATISTICS
                          for side, frame in (("data", observed), ("model", model))})
    if gene_names is not None:
        genes.index = pd.Index([str(g) for g in gene_names])
    rows = {}
    for stat in STATISTICS:
        a, b = observed[stat].to_numpy(), model[stat].to_numpy()
        scale: Callable[[np.ndarray], np.ndarray] = (lambda v: v) if stat == "zero_fraction" else np.log1p
        varies = np.ptp(a) > 0 and np.ptp(b) > 0
        rows[stat] = {"pearson": float(pearsonr(a, b)[0]) if varies else float("nan"),
                      "spearman": float(spearmanr(a, b)[0]) if varies else float("nan"),
                      "mae": float(np.mean(np.abs(scale(a) - scale(b))))}
    table = pd.DataFrame(rows).T
    return PPCResult(genes, table, float(table["mae"].mean()), len(draws))


def posterior_predictive_check(model: Any, adata: Any = None, *, n_samples: int = 1, seed: int = 0,
                               batch_size: int = 1024) -> PPCResult:
    """Draw counts for the cells of ``adata`` (default: the model's data) from a fitted recipe and compare.

    Each draw encodes every cell, samples its latent blocks from the posterior, and samples counts from
    the likelihood given the cell's own labels and library (``torch.manual_seed(seed + draw)``).
    """
    import torch

    from fcrkit.data.anndata import get_matrix

    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"n_samples={n_samples!r} must be a positive integer.")
    adata = model.adata if adata is None else adata

    def decode(batch: Any, labels: Any) -> Any:
        z = {name: loc + scale * torch.randn_like(loc) for name, (loc, scale) in model.module.encode(batch).items()}
        return model.module.decode_mean(z, batch.labels, batch.library, sample=True)

    draws = []
    for k in range(n_samples):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + k)
            draws.append(model._decode_cells(adata, decode, {}, batch_size))
    return ppc_compare(get_matrix(adata, model.setup.layer), draws, adata.var_names)
