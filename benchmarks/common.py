"""Shared pieces of the performance benchmarks: simulated count matrices of any size, and table output.

:func:`simulated_counts` builds a cells x genes matrix of negative-binomial counts from a 10-D latent
through a fixed random linear-softmax map, chunk by chunk, so a 200k x 10k matrix never exists
dense. Cells carry a ``treatment`` (a control and three drugs, each shifting the latent) and a
``cell_type`` (three, each with its own latent mean), registered with :func:`fcrkit.setup_anndata`.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

import fcrkit

N_LATENT = 10
TREATMENTS = ("control", "drug_a", "drug_b", "drug_c")
CELL_TYPES = ("type_0", "type_1", "type_2")
CHUNK = 10_000


def simulated_counts(n_cells: int, n_genes: int, *, seed: int = 0, sparse: bool = True,
                     library_size: float = 1500.0, dispersion: float = 5.0) -> AnnData:
    """NB counts of ``n_cells`` x ``n_genes`` (CSR when ``sparse``), registered for fcrkit.

    About 25-35% of entries are non-zero at the default library size (scRNA-seq is typically 5-30%).
    """
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0 / np.sqrt(N_LATENT), (N_LATENT, n_genes))
    gene_bias = rng.normal(0.0, 1.0, n_genes)
    type_means = rng.normal(0.0, 1.0, (len(CELL_TYPES), N_LATENT))
    shifts = np.zeros((len(TREATMENTS), N_LATENT))
    shifts[1:] = rng.normal(0.0, 1.0, (len(TREATMENTS) - 1, N_LATENT))
    cell_type = rng.integers(len(CELL_TYPES), size=n_cells)
    treatment = rng.integers(len(TREATMENTS), size=n_cells)
    chunks = []
    for start in range(0, n_cells, CHUNK):
        rows = slice(start, min(start + CHUNK, n_cells))
        z = rng.normal(size=(rows.stop - start, N_LATENT)) + type_means[cell_type[rows]] + shifts[treatment[rows]]
        logits = z @ weights + gene_bias
        fractions = np.exp(logits - logits.max(axis=1, keepdims=True))
        fractions /= fractions.sum(axis=1, keepdims=True)
        library = library_size * rng.lognormal(0.0, 0.3, (len(z), 1))
        mean = fractions * library
        counts = rng.poisson(rng.gamma(dispersion, mean / dispersion)).astype(np.float32)
        chunks.append(sp.csr_matrix(counts) if sparse else counts)
    matrix = sp.vstack(chunks, format="csr") if sparse else np.vstack(chunks)
    obs = pd.DataFrame({"treatment": pd.Categorical(np.asarray(TREATMENTS)[treatment], categories=TREATMENTS),
                        "cell_type": pd.Categorical(np.asarray(CELL_TYPES)[cell_type], categories=CELL_TYPES)},
                       index=[f"cell_{i}" for i in range(n_cells)])
    adata = AnnData(matrix, obs=obs, var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]))
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    return adata


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1e9 if sys.platform == "darwin" else 1e6)


def report(rows: list[dict], csv: str | Path | None, title: str) -> pd.DataFrame:
    """Print ``rows`` as a table under ``title`` and write them to ``csv`` (when given)."""
    table = pd.DataFrame(rows)
    print(f"\n{title}\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"))
    if csv is not None:
        table.to_csv(csv, index=False)
        print(f"\nwritten: {csv}")
    return table
