"""Simulated perturbation data with known latents.

``basic`` is the small world the demo and the tests use: a latent per cell whose mean depends on
its cell type and (sparsely) on its treatment, a random non-linear map to gene fractions, and
negative-binomial counts with varying library sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from fcrkit.errors import ConfigError


def _leaky_relu(a: np.ndarray, slope: float = 0.2) -> np.ndarray:
    return np.where(a > 0, a, slope * a)


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"simulate: {name}={value!r} must be a positive integer.")


def basic(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_latent: int = 6,
    n_cell_types: int = 4,
    n_treatments: int = 2,
    *,
    control_fraction: float = 0.5,
    library_size: float = 2000.0,
    dispersion: float = 5.0,
    seed: int = 0,
) -> AnnData:
    """Counts from a latent shaped by cell type and treatment.

    ``z = mu[cell type] + shift[treatment] + N(0, I)`` (each treatment shifts about a third of the
    latents; controls none), then gene fractions ``softmax(W2 leaky_relu(W1 z))``, library sizes
    log-normal around ``library_size``, and ``y ~ NB(mean = library * fractions, theta = dispersion)``.

    Returns:
        An AnnData with CSR integer counts in ``X``, ``obs["cell_type"]`` (``type_0`` ...),
        ``obs["treatment"]`` (``control``, ``drug_0`` ...), and the true latent in
        ``obsm["z_true"]``.
    """
    _check_positive(n_cells=n_cells, n_genes=n_genes, n_latent=n_latent, n_cell_types=n_cell_types,
                    n_treatments=n_treatments)
    if not 0.0 <= control_fraction <= 1.0:
        raise ConfigError(f"simulate: control_fraction={control_fraction!r} must be in [0, 1].")
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(n_cell_types, size=n_cells)
    treated = rng.random(n_cells) >= control_fraction
    drug = np.where(treated, rng.integers(n_treatments, size=n_cells), -1)

    type_means = rng.normal(0.0, 2.0, size=(n_cell_types, n_latent))
    mask = rng.random((n_treatments, n_latent)) < 1 / 3
    mask[np.arange(n_treatments), rng.integers(n_latent, size=n_treatments)] = True  # every drug acts
    shifts = mask * rng.choice([-1.0, 1.0], size=mask.shape) * rng.normal(2.5, 0.5, size=mask.shape)
    z = type_means[cell_type] + rng.normal(size=(n_cells, n_latent))
    z[treated] += shifts[drug[treated]]

    hidden = 4 * n_latent
    w1 = rng.normal(0, 1 / np.sqrt(n_latent), size=(n_latent, hidden))
    w2 = rng.normal(0, 1.5 / np.sqrt(hidden), size=(hidden, n_genes))
    logits = _leaky_relu(z @ w1) @ w2
    fractions = np.exp(logits - logits.max(axis=1, keepdims=True))
    fractions /= fractions.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(library_size), 0.3, size=(n_cells, 1))
    mean = library * fractions
    counts = rng.poisson(rng.gamma(dispersion, mean / dispersion))  # gamma-Poisson = NB

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{k}" for k in cell_type]),
            "treatment": pd.Categorical(np.where(treated, [f"drug_{d}" for d in drug], "control")),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    adata = AnnData(sp.csr_matrix(counts.astype(np.int32)), obs=obs, var=var)
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.uns["simulation"] = {"kind": "basic", "seed": seed, "treatment_targets": mask.astype(np.int8)}
    return adata
