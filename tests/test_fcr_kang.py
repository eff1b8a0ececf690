"""FCR on Kang IFN-β PBMC: counterfactual prediction for a held-out cell type, and block clustering.

Protocol (../shared/data/README.md): hold out the stimulated cells of one cell type, train on the
rest, predict that cell type's stimulated expression from its own controls, and score R² of
``log1p`` of the mean normalised expression (all genes, and the top-50 DEGs of the true stimulated
cells against their controls) against the additive answer: the controls plus the mean
stimulated-minus-control shift of the other cell types.
"""

from __future__ import annotations

import fcrkit
from fcrkit.metrics import block_cluster_scores
from tests.kang import kang_split


def test_fcr_predicts_a_held_out_cell_type_and_separates_its_blocks():
    kang = kang_split()
    train = kang.train
    model = fcrkit.models.FCR(train, n_latent=10, seed=0)
    model.train(max_epochs=40, batch_size=256, seed=0, accelerator="cpu")

    fcr = kang.scores(model.predict(kang.controls, treatment="STIM", seed=0))
    kang.report("FCR", fcr)
    additive = kang.baselines["additive"]
    assert fcr["r2_top50"] >= additive["r2_top50"] + 0.1
    assert fcr["r2_all"] >= additive["r2_all"] - 0.03

    latent = model.get_latent_representation()
    nmi = block_cluster_scores({b: latent[f"X_fcr_{b}"] for b in ("x", "t")},
                               {key: train.obs[key].to_numpy() for key in ("cell_type", "sample")})
    print(nmi.round(3))
    assert nmi.loc["x", "nmi_cell_type"] > nmi.loc["t", "nmi_cell_type"]
    assert nmi.loc["t", "nmi_sample"] > nmi.loc["x", "nmi_sample"]
