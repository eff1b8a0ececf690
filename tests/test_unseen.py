"""Unseen perturbations: treatment features at setup, models that embed them, and the errors on bad features.

The simulator ``fcrkit.simulate.feature_effects`` makes each treatment's effect one fixed linear map of its
known features, so a model that learns the map from the training treatments can predict a treatment no
training cell received; the perturbed mean (Systema's reference) cannot.
"""

from __future__ import annotations

import types

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import fcrkit
from fcrkit import metrics, tasks
from fcrkit.data.anndata import AnnDataSetup, get_setup
from fcrkit.errors import ConfigError, DataError, UnknownComponentError
from fcrkit.models import FCR, LinearRidge, PerturbedMean


def small(seed: int = 0) -> tuple[ad.AnnData, pd.DataFrame]:
    """A small feature world (8 treatments, 2 covariate values) and its features."""
    adata = fcrkit.simulate.feature_effects(n_treatments=8, n_features=4, cells_per_condition=20, n_genes=30,
                                            seed=seed)
    return adata, adata.uns["treatment_features"]


def setup(adata: ad.AnnData, features: pd.DataFrame | None) -> AnnDataSetup:
    return fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"],
                                treatment_features=features)


# -- bad features: each error names the culprit and the fix --------------------------------------------
def test_a_treatment_of_the_data_without_a_feature_row_is_named():
    adata, features = small()
    with pytest.raises(DataError, match=r"no row for treatment\(s\) 'pert_3'.*add the rows"):
        setup(adata, features.drop(index="pert_3"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_feature_is_named_with_its_treatment_and_column(bad):
    adata, features = small()
    features = features.copy()
    features.loc["pert_5", "feat_2"] = bad
    with pytest.raises(DataError, match=r"non-finite.*treatment 'pert_5', column 'feat_2'.*Impute"):
        setup(adata, features)


def test_a_text_column_is_named():
    adata, features = small()
    features = features.assign(source=["screen"] * len(features))
    with pytest.raises(DataError, match=r"column 'source' is not numeric.*encode or drop"):
        setup(adata, features)


def test_duplicated_rows_are_named():
    adata, features = small()
    with pytest.raises(DataError, match=r"duplicated row\(s\) 'pert_1'.*groupby"):
        setup(adata, pd.concat([features, features.loc[["pert_1"]]]))


def test_wrong_shapes_and_types_are_refused():
    adata, features = small()
    with pytest.raises(DataError, match=r"shape \(8, 0\).*at least one feature column"):
        setup(adata, features.iloc[:, :0])
    with pytest.raises(ConfigError, match=r"must be a pandas DataFrame.*got a ndarray"):
        setup(adata, features.to_numpy())
    with pytest.raises(ConfigError, match=r"must be a pandas DataFrame.*got a Series"):
        setup(adata, features["feat_0"])
    combo = pd.concat([features, features.iloc[[0]].set_axis(["pert_0+pert_1"])])
    with pytest.raises(DataError, match=r"row 'pert_0\+pert_1' is a combination"):
        setup(adata, combo)
    with pytest.raises(ConfigError, match="without treatment_key"):
        fcrkit.setup_anndata(adata, covariate_keys=["covariate"], treatment_features=features)


# -- storage: the features travel with the setup and the model -------------------------------------------
def test_features_join_the_vocabulary_and_survive_h5ad_and_json(tmp_path):
    adata, features = small()
    adata = adata[~adata.obs["treatment"].isin(["pert_6", "pert_7"])].copy()  # two treatments absent
    extra = pd.concat([features, pd.DataFrame([[0.5, -1.0, 2.0, 0.0]], index=["control"],
                                              columns=features.columns)])  # a control row is ignored
    registered = setup(adata, extra)
    assert registered.treatments == tuple(f"pert_{p}" for p in range(8))  # the unseen rows included
    np.testing.assert_array_equal(registered.feature_matrix(), features.loc[list(registered.treatments)].to_numpy())
    assert AnnDataSetup.from_dict(registered.to_dict()) == registered
    adata.uns.pop("treatment_features")  # the simulator's copy; the setup keeps its own
    adata.write_h5ad(tmp_path / "a.h5ad")
    assert get_setup(ad.read_h5ad(tmp_path / "a.h5ad")) == registered
    other = features.copy()
    other.iloc[0, 0] += 1e-9
    assert AnnDataSetup.from_dict({**registered.to_dict(), **setup(adata, other).to_dict()}) != registered


def test_a_saved_model_keeps_its_features_and_predicts_an_unseen_treatment_alike(tmp_path):
    adata, features = small()
    train = adata[adata.obs["treatment"] != "pert_7"].copy()
    setup(train, features)
    model = FCR(train, n_latent=2, n_hidden=16, prior_hidden=8, seed=0)
    assert model.module.uses_treatment_features
    model.train(max_epochs=1, batch_size=128, seed=0)
    controls = adata[adata.obs["treatment"] == "control"][:10].copy()
    expected = model.predict(controls, treatment="pert_7", seed=0).X
    model.save(tmp_path / "m")
    loaded = FCR.load(tmp_path / "m", train)
    assert loaded.setup == model.setup
    np.testing.assert_array_equal(loaded.predict(controls, treatment="pert_7", seed=0).X, expected)


def test_a_checkpoint_of_other_features_is_not_resumed(tmp_path):
    adata, features = small()
    setup(adata, features)
    FCR(adata, n_latent=2, n_hidden=16, seed=0).train(max_epochs=1, batch_size=256, seed=0, checkpoint_dir=tmp_path)
    other = adata.copy()
    setup(other, features * 2.0)
    with pytest.raises(ConfigError, match="treatment_features="):
        FCR(other, n_latent=2, n_hidden=16, seed=0).train(max_epochs=2, batch_size=256, seed=0,
                                                           checkpoint_dir=tmp_path, resume=True)


def test_a_model_with_free_embeddings_refuses_a_treatment_it_never_saw():
    adata, features = small()
    train = adata[adata.obs["treatment"] != "pert_7"].copy()
    setup(train, features)
    spec = {"name": "free", "blocks": [{"name": "z", "dim": 2, "encoder": {"name": "mlp"},
                                        "prior": {"name": "conditional_gaussian", "conditions": ["t"],
                                                  "treatment_encoder": "none"}}],
            "decoder": {"name": "mlp"}, "likelihood": {"name": "nb"}}
    model = fcrkit.models.Model(train, spec, seed=0)
    assert not model.module.uses_treatment_features
    with pytest.raises(DataError, match=r"'pert_7' has features but no training cells.*does not embed"):
        model.predict(train[:5], treatment="pert_7")
    model.predict(train[:5], treatment="pert_6")  # a trained treatment is fine


class ZeroEmbedding(torch.nn.Module):
    """A plugin's treatment encoder: every treatment embedded as zeros (whatever its features)."""

    def __init__(self, features, width: int = 3):
        super().__init__()
        self.width, self.n = width, len(features)
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def table(self):
        return self.scale * torch.zeros(self.n, self.width)

    def forward(self, labels):
        return labels["t"] @ self.table()


def free_or(treatment_encoder) -> dict:
    """A one-block spec whose conditional prior embeds the treatments with ``treatment_encoder``."""
    return {"name": "emb", "blocks": [{"name": "z", "dim": 2, "encoder": {"name": "mlp"},
                                       "prior": {"name": "conditional_gaussian", "conditions": ["t"],
                                                 "treatment_encoder": treatment_encoder}}],
            "decoder": {"name": "mlp"}, "likelihood": {"name": "nb"}}


def test_a_plugins_treatment_encoder_is_chosen_by_name_and_an_unknown_one_is_named(fcrkit_plugin):
    adata, features = small()
    setup(adata, features)
    plugin = types.ModuleType("zero_embedding_plugin")

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        registry.treatment_encoder("zero", ZeroEmbedding)

    plugin.fcrkit_register_components = fcrkit_register_components
    fcrkit_plugin(plugin)
    model = fcrkit.models.Model(adata, free_or({"name": "zero", "width": 4}), seed=0)
    encoder = model.module.priors["z"].treatment_encoder
    assert isinstance(encoder, ZeroEmbedding) and encoder.width == 4 and model.module.uses_treatment_features
    # every treatment embedded alike: the prior is the same for every treatment
    labels = {"t": torch.eye(8)[:3]}
    prior = model.module.priors["z"].distribution(labels, 3)
    assert torch.equal(prior.mean[0], prior.mean[1]) and torch.equal(prior.mean[1], prior.mean[2])
    with pytest.raises(UnknownComponentError, match=r"prior 'conditional_gaussian'.*unknown treatment_encoder 'zer'"
                                                    r".*'zero'"):
        fcrkit.models.Model(adata, free_or("zer"), seed=0)
    with pytest.raises(ConfigError, match=r"treatment_encoder 'zero'.*unexpected keyword.*'depth'.*width"):
        fcrkit.models.Model(adata, free_or({"name": "zero", "depth": 2}), seed=0)


# -- the point: predicting held-out treatments from their features --------------------------------------
def unseen_scores(model_cls, adata: ad.AnnData, split, train_args: dict, **model_args) -> float:
    """Mean PearsonΔ (against the controls) over the split's held-out conditions."""
    train = adata[~split.held_out_mask(adata.obs, "treatment")].copy()
    setup(train, adata.uns["treatment_features"])
    model = model_cls(train, **model_args, seed=0)
    model.train(**train_args, seed=0)
    scores = []
    for hold in split.hold_out:
        level = adata.obs["covariate"] == hold.value
        controls = adata[level & (adata.obs["treatment"] == "control")].copy()
        truth = adata[level & (adata.obs["treatment"] == hold.treatment)].X
        predicted = model.predict(controls, treatment=hold.treatment, seed=0).X
        mean = metrics.mean_log_expression
        scores.append(metrics.pearson_delta(mean(truth), mean(predicted), mean(controls.X)))
    return float(np.mean(scores))


def test_fcr_and_linear_ridge_predict_unseen_treatments_from_their_features():
    torch.set_num_threads(1)
    adata = fcrkit.simulate.feature_effects(n_treatments=16, n_features=4, cells_per_condition=20, n_genes=60,
                                            seed=0)
    split = tasks.unseen_perturbations(adata.obs, "treatment", "covariate", n_treatments=3, min_cells=10, seed=0)[0]
    assert len(split.hold_out) == 6  # 3 treatments x 2 covariate values, none of their cells in training
    reference = unseen_scores(PerturbedMean, adata, split, {})
    ridge = unseen_scores(LinearRidge, adata, split, {})
    fcr = unseen_scores(FCR, adata, split, {"max_epochs": 20, "batch_size": 128, "lr": 1e-2}, n_latent=4, n_hidden=64)
    assert reference < 0.35  # the perturbed mean knows nothing of the held-out treatments (0.30 here)
    assert ridge >= 0.6 and ridge > reference + 0.3
    assert fcr >= 0.6 and fcr > reference + 0.3


def test_a_benchmark_config_reads_the_features_csv_and_the_simulator_brings_its_own(tmp_path):
    from fcrkit.benchmark import BenchmarkConfig, simulated_data

    adata, features = small()
    adata.uns.pop("treatment_features")
    adata.write_h5ad(tmp_path / "cells.h5ad")
    features.to_csv(tmp_path / "features.csv")
    text = ('[data]\npath = "cells.h5ad"\ntreatment_key = "treatment"\ncovariate_keys = ["covariate"]\n'
            'treatment_features = "{}"\n[recipes]\n[output]\ndir = "out"\n')
    (tmp_path / "bench.toml").write_text(text.format("features.csv"))
    config = BenchmarkConfig.from_toml(tmp_path / "bench.toml")
    pd.testing.assert_frame_equal(config.setup["treatment_features"], features)
    (tmp_path / "bench.toml").write_text(text.format("absent.csv"))
    with pytest.raises(ConfigError, match=r"treatment_features: file .*absent.csv' does not exist"):
        BenchmarkConfig.from_toml(tmp_path / "bench.toml")
    simulated, setup_keys = simulated_data("feature_effects", n_treatments=4, cells_per_condition=5, seed=1)
    assert setup_keys["treatment_features"] is simulated.uns["treatment_features"]
