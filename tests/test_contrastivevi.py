"""ContrastiveVI: the salient block holds what only the target cells have, the shared block the rest."""

from __future__ import annotations

import numpy as np
import pytest

import fcrkit
from fcrkit.errors import ConfigError
from fcrkit.metrics.neighbors import knn_accuracy

#: The world, model and training of the trained test; ``benchmarks/contrastivevi.py`` runs them over seeds
#: (the numbers are in docs/recipes/contrastivevi.md).
WORLD = {"n_cells": 1000, "n_genes": 100, "separation": 2.5, "n_subgroups": 2}
MODEL = {"n_latent": {"shared": 10, "salient": 10}, "n_hidden": 64}
TRAIN = {"max_epochs": 100, "batch_size": 500, "lr": 1e-2, "accelerator": "cpu"}


def contrastive_world(seed: int):
    adata = fcrkit.simulate.contrastive(**WORLD, seed=seed)
    fcrkit.setup_anndata(adata, treatment_key="condition", control_value="background")
    return adata


def block_scores(adata, latents: dict[str, np.ndarray]) -> dict[str, float]:
    """kNN accuracy of the target cells' subgroup and cell type from each block, and the salient norms."""
    target = (adata.obs["condition"] == "target").to_numpy()
    shared, salient = latents["X_contrastivevi_shared"], latents["X_contrastivevi_salient"]
    subgroup, cell_type = adata.obs["subgroup"].to_numpy()[target], adata.obs["cell_type"].to_numpy()[target]
    norms = np.linalg.norm(salient, axis=1)
    return {
        "subgroup_salient": knn_accuracy(salient[target], subgroup),
        "subgroup_shared": knn_accuracy(shared[target], subgroup),
        "cell_type_shared": knn_accuracy(shared[target], cell_type),
        "cell_type_salient": knn_accuracy(salient[target], cell_type),
        "salient_norm_background": float(norms[~target].mean()),
        "salient_norm_target": float(norms[target].mean()),
    }


def test_salient_block_separates_target_subgroups_and_shared_block_the_cell_types():
    adata = contrastive_world(seed=0)
    model = fcrkit.models.ContrastiveVI(adata, **MODEL)
    model.train(**TRAIN, seed=0)
    latents = model.get_latent_representation()
    assert sorted(latents) == ["X_contrastivevi_salient", "X_contrastivevi_shared"]
    assert all(z.shape == (adata.n_obs, 10) for z in latents.values())
    scores = block_scores(adata, latents)
    # two subgroups (chance 0.5): the salient block tells them apart, the shared block much less
    assert scores["subgroup_salient"] > 0.75
    assert scores["subgroup_salient"] > scores["subgroup_shared"] + 0.1, scores
    # three cell types (chance 1/3), shared by background and target cells: the reverse
    assert scores["cell_type_shared"] > scores["cell_type_salient"] + 0.15, scores
    # the background cells' salient posterior means sit near 0: their salient draw never reaches the decoder
    assert scores["salient_norm_background"] < 0.5 * scores["salient_norm_target"], scores


def test_spec_masks_the_salient_block_of_background_cells_and_checks_n_latent():
    spec = fcrkit.models.contrastivevi_spec(n_latent={"shared": 6, "salient": 3})
    assert spec.block_dims == {"shared": 6, "salient": 3}
    assert (spec.combiner.name, spec.combiner.conditions, dict(spec.combiner.options)) == (
        "masked", ("t",), {"block": "salient"})
    assert fcrkit.models.contrastivevi_spec(n_latent=4).block_dims == {"shared": 4, "salient": 4}
    with pytest.raises(ConfigError, match="unknown block 'salience'.*Did you mean 'salient'"):
        fcrkit.models.contrastivevi_spec(n_latent={"shared": 6, "salience": 3})
    with pytest.raises(ConfigError, match="lacks block.*'salient'"):
        fcrkit.models.contrastivevi_spec(n_latent={"shared": 6})


def test_salient_block_does_not_reach_the_decoder_for_background_cells():
    """Two background cells that differ only in their salient value decode alike; target cells do not."""
    import torch

    adata = contrastive_world(seed=1)[:200].copy()
    model = fcrkit.models.ContrastiveVI(adata, n_latent=3, seed=0)
    model.module.eval()
    n_t = model.setup.label_dims["t"]
    z = {"shared": torch.zeros(2, 3), "salient": torch.tensor([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]])}
    library = torch.full((2, 1), 1000.0)
    with torch.no_grad():
        background = model.module.decode_mean(z, {"t": torch.zeros(2, n_t)}, library)
        target = model.module.decode_mean(z, {"t": torch.ones(2, n_t)}, library)
    assert torch.equal(background[0], background[1])
    assert not torch.allclose(target[0], target[1])
    flow = fcrkit.models.ContrastiveVI(adata, n_latent=3, posterior="flow", seed=0)  # as every recipe
    assert {b.posterior.name for b in flow.spec.blocks} == {"flow"}


def test_contrastive_world_has_salient_structure_in_target_cells_only():
    adata = fcrkit.simulate.contrastive(n_cells=400, n_genes=30, separation=4.0, seed=3)
    target = (adata.obs["condition"] == "target").to_numpy()
    assert 0.4 < target.mean() < 0.6
    assert not adata.obsm["z_salient"][~target].any() and adata.obsm["z_salient"][target].any()
    assert set(adata.obs["subgroup"][~target]) == {"none"}
    assert set(adata.obs["subgroup"][target]) == {"group_0", "group_1"}
    # the subgroup means are `separation` apart: the subgroup averages of the target cells' salient latent show it
    z, groups = adata.obsm["z_salient"][target], adata.obs["subgroup"].to_numpy()[target]
    gap = np.linalg.norm(z[groups == "group_0"].mean(0) - z[groups == "group_1"].mean(0))
    assert gap == pytest.approx(4.0, abs=0.4)
    assert (adata.X.toarray() == fcrkit.simulate.contrastive(n_cells=400, n_genes=30, separation=4.0, seed=3).X).all()
    with pytest.raises(ConfigError, match="target_fraction=1.0 must be in \\(0, 1\\)"):
        fcrkit.simulate.contrastive(target_fraction=1.0)


def test_the_docs_spec_is_the_recipe(tmp_path):
    """The TOML of docs/recipes/contrastivevi.md composes exactly the recipe's default spec."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "recipes" / "contrastivevi.md").read_text()
    (tmp_path / "contrastivevi.toml").write_text(re.search(r"```toml\n(.*?)```", page, re.DOTALL).group(1))
    assert fcrkit.ModelSpec.from_toml(tmp_path / "contrastivevi.toml") == fcrkit.models.contrastivevi_spec()
