"""Combiners: how the latent blocks reach the decoder (concat, masked, sparse_additive)."""

from __future__ import annotations

import pytest
import torch

import fcrkit
from fcrkit.components.combiners import Masked, SparseAdditive
from fcrkit.errors import ConfigError
from fcrkit.spec import ModelSpec


def spec(combiner: object = None, blocks: tuple = (("z", 3),)) -> dict:
    out = {"name": "c", "likelihood": "nb", "blocks": [{"name": b, "dim": d} for b, d in blocks],
           "decoder": {"name": "mlp", "n_hidden": 16}}
    if combiner is not None:
        out["combiner"] = combiner
    return out


def test_sparse_additive_is_the_dense_sum_of_masked_embeddings_without_a_cells_by_treatments_by_dims_tensor():
    comb = SparseAdditive({"z": 4}, {"t": 6})
    with torch.no_grad():
        comb.embeddings.normal_(generator=torch.Generator().manual_seed(0))
        comb.mask_logits.normal_(generator=torch.Generator().manual_seed(1))
    t = torch.zeros(5, 6)
    t[0, 1] = 1.0
    t[2, [0, 3]] = torch.tensor([0.5, 2.0])  # a combination with doses
    t[4, 5] = 1.0                            # rows 1 and 3: controls
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    expected = z + t @ (torch.sigmoid(comb.mask_logits) * comb.embeddings)
    torch.testing.assert_close(comb({"z": z}, {"t": t}), expected)


def test_masked_zeroes_the_block_of_control_cells_only():
    comb = Masked({"shared": 2, "salient": 3}, {"t": 2}, block="salient")
    z = {"shared": torch.ones(3, 2), "salient": torch.ones(3, 3)}
    out = comb(z, {"t": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]])})
    assert out.shape == (3, 5)
    assert out[0, 2:].eq(0).all() and out[1:, 2:].eq(1).all() and out[:, :2].eq(1).all()


def test_combiner_in_toml_round_trips_and_bad_entries_are_named(tmp_path, small_adata):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\ncombiner = { name = "sparse_additive", conditions = ["t"], basal = "z" }\n'
                    '[[blocks]]\nname = "z"\ndim = 3\n')
    parsed = ModelSpec.from_toml(path)
    assert parsed.combiner.name == "sparse_additive" and ModelSpec.from_dict(parsed.to_dict()) == parsed
    assert "combiner" not in ModelSpec.from_dict(spec()).to_dict()  # the default stays implicit
    with pytest.raises(ConfigError, match="combiner 'sparse_additive' adds the cells' treatment shifts.*"
                                          "conditions = \\['t'\\]"):
        fcrkit.compose(spec({"name": "sparse_additive"}), small_adata)
    with pytest.raises(ConfigError, match="combiner 'masked': unknown block 'salient'"):
        fcrkit.compose(spec({"name": "masked", "conditions": ["t"], "block": "salient"}), small_adata)


def test_sparse_additive_model_trains_and_predicts_through_the_treatment_shift(small_adata):
    model = fcrkit.compose(spec({"name": "sparse_additive", "conditions": ["t"]}), small_adata, seed=0)
    history = model.train(max_epochs=3, batch_size=200, lr=1e-2, accelerator="cpu", seed=0)
    assert history["validation_loss"][-1] < history["validation_loss"][0]
    controls = small_adata[small_adata.obs["treatment"] == "control"][:20]
    treated, untreated = (model.predict(controls, treatment=t).X for t in (model.setup.treatments[0], "control"))
    assert abs(treated - untreated).max() > 1e-3  # the learned shift moves the prediction
