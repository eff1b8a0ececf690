"""Small simulated data sets shared by tests (like ``tests/kang.py`` for the real one)."""

from __future__ import annotations

from anndata import AnnData

import fcrkit


def interaction_data(n_cells: int, n_genes: int, seed: int = 0) -> AnnData:
    """Simulated counts of the interaction world (a treatment and a covariate), set up for fcrkit."""
    adata = fcrkit.simulate.interaction(n_cells=n_cells, n_genes=n_genes, seed=seed)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    return adata
