"""FCR on Kang IFN-β PBMC: counterfactual prediction for a held-out cell type, and block clustering.

Protocol (../shared/data/README.md): hold out the stimulated cells of one cell type, train on the
rest, predict that cell type's stimulated expression from its own controls, and score R² of
``log1p`` of the mean normalised expression (all genes, and the top-50 DEGs of the true stimulated
cells against their controls) against the additive answer: the controls plus the mean
stimulated-minus-control shift of the other cell types.
"""

from __future__ import annotations

import fcrkit
from fcrkit.metrics import additive_baseline, block_cluster_scores, prediction_scores
from tests.conftest import shared_dataset
from tests.test_scvi import most_variable_genes

HELD_OUT = "CD14 Mono"


def test_fcr_predicts_a_held_out_cell_type_and_separates_its_blocks():
    adata = shared_dataset("kang_ifnb2800.h5ad")
    adata = adata[:, most_variable_genes(adata.X, 2000)].copy()
    kind, stim = adata.obs["cell_type"], adata.obs["sample"]
    held_out = (kind == HELD_OUT) & (stim == "STIM")
    train = adata[~held_out].copy()
    fcrkit.setup_anndata(train, treatment_key="sample", control_value="CTRL", covariate_keys=["cell_type"])

    model = fcrkit.models.FCR(train, n_latent=10, seed=0)
    model.train(max_epochs=40, batch_size=256, seed=0, accelerator="cpu")

    controls = adata[(kind == HELD_OUT) & (stim == "CTRL")].copy()
    predicted = model.predict(controls, treatment="STIM", seed=0)
    truth = adata[held_out].X
    fcr = prediction_scores(truth, predicted.X, controls.X)
    others = [
        (adata[(kind == c) & (stim == "STIM")].X, adata[(kind == c) & (stim == "CTRL")].X)
        for c in kind.cat.categories
        if c != HELD_OUT and ((kind == c) & (stim == "STIM")).any() and ((kind == c) & (stim == "CTRL")).any()
    ]
    additive = prediction_scores(truth, control_counts=controls.X, pred_mean=additive_baseline(controls.X, others))
    print(f"\nKang, {HELD_OUT} held out: FCR R2 top-50 DEGs {fcr['r2_top50']:.3f}, all {fcr['r2_all']:.3f}; "
          f"additive {additive['r2_top50']:.3f}, {additive['r2_all']:.3f}")
    assert fcr["r2_top50"] >= additive["r2_top50"] + 0.1
    assert fcr["r2_all"] >= additive["r2_all"] - 0.03

    latent = model.get_latent_representation()
    nmi = block_cluster_scores({b: latent[f"X_fcr_{b}"] for b in ("x", "t")},
                               {key: train.obs[key].to_numpy() for key in ("cell_type", "sample")})
    print(nmi.round(3))
    assert nmi.loc["x", "nmi_cell_type"] > nmi.loc["t", "nmi_cell_type"]
    assert nmi.loc["t", "nmi_sample"] > nmi.loc["x", "nmi_sample"]
