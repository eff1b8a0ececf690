"""Data: registering an AnnData (``setup_anndata``) and serving it as minibatches (``CellData``).

``cell_data`` serves a backed AnnData (``backed="r"``) out of core, as a ``BackedCellData``.
"""

from fcrkit.data.anndata import (
    AnnDataSetup,
    check_new_cells,
    check_unique_genes,
    check_values,
    get_matrix,
    get_setup,
    setup_anndata,
)
from fcrkit.data.backed import BackedCellData, cell_data
from fcrkit.data.genes import highly_variable_genes
from fcrkit.data.loaders import Batch, CellData

__all__ = [
    "AnnDataSetup",
    "setup_anndata",
    "get_setup",
    "get_matrix",
    "check_values",
    "check_new_cells",
    "check_unique_genes",
    "highly_variable_genes",
    "Batch",
    "CellData",
    "BackedCellData",
    "cell_data",
]
