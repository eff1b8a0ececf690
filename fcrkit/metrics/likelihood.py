"""Likelihood of held-out cells under a trained model: ELBO and importance-weighted ELBO (IWELBO).

For a cell ``y`` with labels, ``K`` draws ``z_k ~ q(z | y)`` from the model's guide give the log
importance weights ``log w_k = log p(y, z_k | labels) - log q(z_k | y)`` (every latent site of the
model, the prior included, and the likelihood site ``y``). Then

* ``ELBO ≈ mean_k log w_k`` (a Monte Carlo estimate of the ELBO, KL included);
* ``IWELBO_K = log (1/K) Σ_k w_k`` (Burda et al. 2016), a tighter lower bound of ``log p(y)`` that
  grows with ``K`` (sVAE reports it with K = 1000 per treatment).

The weights are read off Pyro traces of the model's own ``guide`` and ``model`` (the model replayed
on the guide's draws), so any model composed by fcrkit is scored the same way. The model is put in
evaluation mode (no dropout, batch norm with its running statistics, priors in their evaluation
form, e.g. ``sparse_shift``'s binarised masks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from fcrkit.data.loaders import Batch
from fcrkit.errors import ConfigError, DataError

__all__ = ["iwelbo", "likelihood_bounds", "likelihood_table"]

#: Most cells x particles x genes values one forward pass of the decoder handles.
MAX_ELEMENTS = 1 << 23


def _log_weights(module: Any, batch: Batch, k: int, n_obs: int) -> torch.Tensor:
    """``log p(y, z) - log q(z | y)`` for ``k`` guide draws of each cell of ``batch``, ``(k, B)``."""
    n = batch.y.shape[0]
    rep = Batch(y=batch.y.repeat(k, 1), library=batch.library.repeat(k, 1),
                labels={key: v.repeat(k, 1) for key, v in batch.labels.items()}, index=batch.index.repeat(k))
    # global blocks (one row per treatment, shared by every cell) are held at their posterior point: the
    # bounds are per cell, given them (as sVAE reports them, its masks and shifts being point estimates)
    points = module.global_points() if getattr(module, "globals", None) else {}
    guide = poutine.trace(poutine.condition(module.guide, data=points)).get_trace(rep, n_obs)
    # discrete sites a prior marks for enumeration (a mixture's component) take every value at once,
    # in dimensions left of the cells plate, and are summed out below
    enumerated = poutine.enum(poutine.condition(module.model, data=points), first_available_dim=-2)
    model = poutine.trace(poutine.replay(enumerated, trace=guide)).get_trace(rep, n_obs)
    log_p = torch.zeros(k * n, device=batch.y.device)
    for site in model.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site) and site["name"] not in points:
            log_p = log_p + site["fn"].log_prob(site["value"])
    while log_p.dim() > 1:
        log_p = torch.logsumexp(log_p, dim=0)
    log_q = torch.zeros(k * n, device=batch.y.device)
    for site in guide.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site) and not site["is_observed"]:
            log_q = log_q + site["fn"].log_prob(site["value"]).reshape(k * n)
    return (log_p.reshape(k * n) - log_q).reshape(k, n)


@torch.no_grad()
def likelihood_bounds(model: Any, adata: AnnData | None = None, *, k: int = 100, batch_size: int = 128,
                      seed: int = 0) -> pd.DataFrame:
    """Per-cell ELBO and IWELBO of ``adata``'s cells (default: the training data) with ``k`` samples.

    Args:
        model: a trained fcrkit model (:class:`~fcrkit.models.Model` or a recipe).
        adata: cells to score, with the model's genes and setup (held-out cells, typically).
        k: importance samples per cell (sVAE: 1000).
        batch_size: cells per forward pass (the particles are split further to bound memory).
        seed: seed of the guide draws (the global random state is left as it was).

    Returns:
        A DataFrame indexed by ``adata.obs_names`` with columns ``elbo`` and ``iwelbo`` (nats per cell;
        higher is better).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"likelihood_bounds: k={k!r} must be a positive integer.")
    adata = model.adata if adata is None else adata
    data = model._cell_data(adata)
    module = model.module
    module.eval()
    elbo, iwelbo = [], []
    devices = [data.device] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if data.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        for batch in data.iter_batches(torch.arange(data.n_obs, device=data.device), batch_size, shuffle=False):
            chunk = max(1, min(k, MAX_ELEMENTS // max(1, batch.y.shape[0] * data.n_genes)))
            parts = [_log_weights(module, batch, min(chunk, k - start), data.n_obs) for start in range(0, k, chunk)]
            log_w = torch.cat(parts)
            if not torch.isfinite(log_w).all():
                raise DataError("likelihood_bounds: a log importance weight is not finite; are these cells counts "
                                "the model can score?")
            elbo.append(log_w.mean(0).cpu().numpy())
            iwelbo.append((torch.logsumexp(log_w, 0) - math.log(k)).cpu().numpy())
    return pd.DataFrame({"elbo": np.concatenate(elbo), "iwelbo": np.concatenate(iwelbo)},
                        index=adata.obs_names.copy())


def iwelbo(model: Any, adata: AnnData | None = None, *, k: int = 100, batch_size: int = 128,
           seed: int = 0) -> np.ndarray:
    """Per-cell importance-weighted ELBO with ``k`` samples, ``(n_cells,)`` (see :func:`likelihood_bounds`)."""
    return likelihood_bounds(model, adata, k=k, batch_size=batch_size, seed=seed)["iwelbo"].to_numpy()


def likelihood_table(model: Any, adata: AnnData | None = None, *, by: str | None = None, k: int = 100,
                     batch_size: int = 128, seed: int = 0) -> pd.DataFrame:
    """Mean ELBO and IWELBO per group of cells (default: per treatment), as sVAE reports them.

    Args:
        by: obs column to group by (default: the model's treatment column).
        k: as for :func:`likelihood_bounds`.
        batch_size: as for :func:`likelihood_bounds`.
        seed: as for :func:`likelihood_bounds`.

    Returns:
        A DataFrame indexed by group with columns ``n_cells``, ``elbo`` and ``iwelbo`` (means over the
        group's cells).
    """
    adata = model.adata if adata is None else adata
    by = model.setup.treatment_key if by is None else by
    if by is None or by not in adata.obs:
        raise ConfigError(f"likelihood_table: by={by!r} is not an obs column of the data; name one.")
    values = likelihood_bounds(model, adata, k=k, batch_size=batch_size, seed=seed)
    groups = adata.obs[by].astype(str).to_numpy()
    table = values.groupby(groups).agg(n_cells=("elbo", "size"), elbo=("elbo", "mean"), iwelbo=("iwelbo", "mean"))
    table.index.name = by
    return table
