"""Data: registering an AnnData (``setup_anndata``) and serving it as minibatches (``CellData``)."""

from fcrkit.data.anndata import AnnDataSetup, check_values, get_matrix, get_setup, setup_anndata
from fcrkit.data.loaders import Batch, CellData

__all__ = [
    "AnnDataSetup",
    "setup_anndata",
    "get_setup",
    "get_matrix",
    "check_values",
    "Batch",
    "CellData",
]
