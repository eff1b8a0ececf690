"""SAMS-VAE: the sparse-additive simulator, its parts (the combiner reading global blocks, the correlated
encoder), and the recipe: held-out doubles predicted from their parts, target recovery, both guides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fcrkit
from fcrkit.components.combiners import SparseAdditive
from fcrkit.components.encoders import BasalMLPEncoder
from fcrkit.errors import ConfigError


# -- the simulator ----------------------------------------------------------------------------------------
def test_sparse_additive_world_doubles_shift_by_the_sum_of_their_singles():
    adata = fcrkit.simulate.sparse_additive(n_cells=900, n_genes=40, n_latent=6, n_perturbations=5, n_doubles=4,
                                            seed=3)
    sim = adata.uns["simulation"]
    targets, shifts = sim["targets"], sim["shifts"]
    assert targets.shape == (5, 6) and set(np.unique(targets)) <= {0, 1}
    assert ((targets.sum(1) >= 1) & (targets.sum(1) <= 2)).all()  # each perturbation shifts 1-2 dimensions
    assert np.array_equal(shifts != 0, targets.astype(bool))
    labels = adata.obs["treatment"].astype(str).to_numpy()
    assert len(sim["doubles"]) == 4 and set(sim["doubles"]) <= set(labels)
    names = list(sim["perturbations"])
    moved = adata.obsm["z_true"] - adata.obsm["z_basal"]  # the latent shift of every cell, exactly
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        expected = sum((shifts[names.index(p)] for p in label.split("+") if p != "control"), np.zeros(6))
        np.testing.assert_allclose(moved[rows], np.broadcast_to(expected, (len(rows), 6)), atol=1e-5)
    assert adata.X.dtype == np.int32 and adata.X.sum(1).min() > 0
    again = fcrkit.simulate.sparse_additive(n_cells=900, n_genes=40, n_latent=6, n_perturbations=5, n_doubles=4,
                                            seed=3)
    assert (again.X != adata.X).nnz == 0  # a pure function of its seed
    fcrkit.setup_anndata(adata, treatment_key="treatment", control_value="control")
    assert list(fcrkit.data.get_setup(adata).treatments) == names


@pytest.mark.parametrize("bad, match", [({"n_doubles": 11}, "n_doubles=11"), ({"n_perturbations": 1}, "at least 2"),
                                        ({"max_targets": 9}, "max_targets=9"), ({"n_cells": 5}, "too few")])
def test_sparse_additive_world_refuses_bad_settings_by_name(bad, match):
    settings = {"n_latent": 8, "n_perturbations": 5, **bad}
    with pytest.raises(ConfigError, match=match):
        fcrkit.simulate.sparse_additive(**settings)


# -- the parts ---------------------------------------------------------------------------------------------
def _entries() -> torch.Tensor:
    t = torch.zeros(5, 6)
    t[0, 1] = 1.0
    t[2, [0, 3]] = torch.tensor([0.5, 2.0])  # a combination with doses
    t[4, 5] = 1.0                            # rows 1 and 3: controls
    return t


def test_sparse_additive_reads_embeddings_and_masks_from_global_blocks():
    comb = SparseAdditive({"z": 4}, {"t": 6, "E": 4, "M": 4}, embedding="E", mask="M")
    assert not list(comb.parameters())  # the shifts are the global blocks', not the combiner's parameters
    gen = torch.Generator().manual_seed(0)
    e, m = torch.randn(6, 4, generator=gen), (torch.rand(6, 4, generator=gen) > 0.5).float()
    z, t = torch.randn(5, 4, generator=gen), _entries()
    torch.testing.assert_close(comb({"z": z, "E": e, "M": m}, {"t": t}), z + t @ (m * e))
    unmasked = SparseAdditive({"z": 4}, {"t": 6, "E": 4}, embedding="E")
    torch.testing.assert_close(unmasked({"z": z, "E": e}, {"t": t}), z + t @ e)


@pytest.mark.parametrize("dims, options, match", [
    ({"t": 6}, {"embedding": "E"}, r"embedding='E' is read from a global block.*conditions = \['t', 'E'\]"),
    ({"t": 6, "E": 3}, {"embedding": "E"}, "'E' .* has dimension 3, but the shifted block has 4"),
    ({"t": 6, "M": 4}, {"mask": "M"}, "mask='M' needs embedding="),
])
def test_sparse_additive_names_a_global_block_it_cannot_read(dims, options, match):
    with pytest.raises(ConfigError, match=match):
        SparseAdditive({"z": 4}, dims, **options)


def test_basal_encoder_subtracts_the_cells_treatment_shift():
    torch.manual_seed(0)
    enc = BasalMLPEncoder(7, 4, {"t": 6, "E": 4, "M": 4}, embedding="E", mask="M", norm="none", dropout=0.0)
    e, m = torch.randn(6, 4), (torch.rand(6, 4) > 0.5).float()
    y, t = torch.rand(5, 7), _entries()
    shift = t @ (m * e)
    loc, scale = enc(y, {"t": t, "E": e, "M": m})
    # the MLP sees [y, shift] and estimates z; the basal mean is that minus the shift
    z_loc, z_scale = super(BasalMLPEncoder, enc).forward(torch.cat([y, shift], -1), {})
    torch.testing.assert_close(loc, z_loc - shift)
    torch.testing.assert_close(scale, z_scale)
    with pytest.raises(ConfigError, match="needs the treatment"):
        BasalMLPEncoder(7, 4, {"E": 4, "M": 4}, embedding="E", mask="M")
