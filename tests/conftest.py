"""Shared fixtures: small simulated data, and the real data sets in ../shared/data (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pytest

import fcrkit
from fcrkit.testing.pytest_plugin import fcrkit_plugin, fcrkit_registry  # noqa: F401  (the plugin-author fixtures)

# tests never pick up third-party plugins installed in the environment unless they ask for them
os.environ.setdefault("FCRKIT_DISABLE_PLUGINS", "1")

SHARED_DATA = Path(os.environ.get("FCRKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_dataset(name: str) -> ad.AnnData:
    """Read ``../shared/data/<name>``, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: the real data sets live in ../shared/data beside the project "
                    "(set FCRKIT_SHARED_DATA to point elsewhere)")
    return ad.read_h5ad(path)


@pytest.fixture
def small_adata() -> ad.AnnData:
    """600 simulated cells x 50 genes, registered with cell type and treatment."""
    adata = fcrkit.simulate.basic(n_cells=600, n_genes=50, n_latent=4, seed=0)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    return adata


def pytest_configure(config):
    # pytest-xdist runs one process per core: more torch threads than cores makes OpenMP spin
    # and slows every test tenfold
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
