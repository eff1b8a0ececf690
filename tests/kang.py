"""The Kang IFN-β held-out cell type protocol shared by the prediction tests (../shared/data/README.md).

Hold out the stimulated cells of one cell type, train on the rest (2000 most variable genes), predict
that cell type's stimulated expression from its own controls, and score R² of ``log1p`` of the mean
normalised expression (all genes, and the top-50 DEGs of the true stimulated cells against their
controls) next to two answers that need no model: no change (the controls themselves) and the
additive answer (the controls plus the mean stimulated-minus-control shift of the other cell types).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anndata import AnnData

import fcrkit
from fcrkit.metrics import additive_baseline, prediction_scores
from tests.conftest import shared_dataset
from tests.test_scvi import most_variable_genes

HELD_OUT = "CD14 Mono"


@dataclass
class KangSplit:
    """The training cells (registered), the held-out cell type's controls and true stimulated counts."""

    train: AnnData
    controls: AnnData
    truth: Any
    baselines: dict[str, dict[str, Any]]

    def scores(self, predicted: AnnData) -> dict[str, Any]:
        """:func:`fcrkit.metrics.prediction_scores` of a prediction from ``controls``."""
        return prediction_scores(self.truth, predicted.X, self.controls.X)

    def report(self, name: str, scores: dict[str, Any]) -> None:
        print(f"\nKang, {HELD_OUT} x STIM held out, R² top-50 DEGs (all genes): {name} {scores['r2_top50']:.3f} "
              f"({scores['r2_all']:.3f}); " + "; ".join(f"{k} {v['r2_top50']:.3f} ({v['r2_all']:.3f})"
                                                       for k, v in self.baselines.items()))


def kang_split(n_genes: int = 2000) -> KangSplit:
    """The split of the protocol above (the test is skipped when ../shared/data is absent)."""
    adata = shared_dataset("kang_ifnb2800.h5ad")
    adata = adata[:, most_variable_genes(adata.X, n_genes)].copy()
    kind, stim = adata.obs["cell_type"], adata.obs["sample"]
    held_out = (kind == HELD_OUT) & (stim == "STIM")
    train = adata[~held_out].copy()
    fcrkit.setup_anndata(train, treatment_key="sample", control_value="CTRL", covariate_keys=["cell_type"])
    controls = adata[(kind == HELD_OUT) & (stim == "CTRL")].copy()
    truth = adata[held_out].X
    others = [
        (adata[(kind == c) & (stim == "STIM")].X, adata[(kind == c) & (stim == "CTRL")].X)
        for c in kind.cat.categories
        if c != HELD_OUT and ((kind == c) & (stim == "STIM")).any() and ((kind == c) & (stim == "CTRL")).any()
    ]
    baselines = {
        "no change": prediction_scores(truth, controls.X, controls.X),
        "additive": prediction_scores(truth, control_counts=controls.X,
                                      pred_mean=additive_baseline(controls.X, others)),
    }
    return KangSplit(train, controls, truth, baselines)
