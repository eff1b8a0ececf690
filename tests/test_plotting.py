"""``fcrkit.plotting`` on real inputs: trained models' histories, latents, block R² and a prediction.

Every figure must be a real PNG with something drawn in it; the embedding falls back to PCA without
umap-learn; bad inputs are refused with messages that name the sizes.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from sklearn.decomposition import PCA

from fcrkit import simulate
from fcrkit.benchmark import HoldOut, run_benchmark, simulated_data
from fcrkit.data.anndata import get_matrix, setup_anndata
from fcrkit.errors import ConfigError, DataError, OptionalDependencyError
from fcrkit.metrics import block_r2, mean_log_expression, rank_genes
from fcrkit.models import FCR, SCVI
from fcrkit.plotting import (
    embed_2d,
    loss_terms,
    plot_benchmark,
    plot_block_r2,
    plot_blocks,
    plot_histories,
    plot_prediction,
    plot_training_curves,
)
from fcrkit.plotting._figure import new_figure
from fcrkit.plotting.embeddings import MAX_LEGEND_ENTRIES, _legend, _level_colours
from fcrkit.plotting.prediction import _deg_indices
from fcrkit.train.trainer import History

BLOCKS = ("x", "t", "tx")
TRAIN = {"max_epochs": 4, "batch_size": 128, "lr": 3e-3, "seed": 0, "accelerator": "cpu", "progress_bar": False}


@pytest.fixture(scope="module")
def run():
    """400 simulated cells x 40 genes; FCR and scVI trained a few epochs; FCR's prediction of cov_0 + drug_0."""
    adata = simulate.interaction(n_cells=400, n_genes=40, seed=0)
    setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    fcr = FCR(adata, n_latent={b: 2 for b in BLOCKS}, seed=0)
    fcr.train(**TRAIN)
    scvi = SCVI(adata, n_latent=6, seed=0)
    scvi.train(**{**TRAIN, "max_epochs": 3})
    latent = fcr.get_latent_representation()
    covariate = adata.obs["covariate"].astype(str).to_numpy()
    treatment = adata.obs["treatment"].astype(str).to_numpy()
    controls = adata[(covariate == "cov_0") & (treatment == "control")].copy()
    treated = get_matrix(adata[(covariate == "cov_0") & (treatment == "drug_0")], None)
    predicted = fcr.predict(controls, treatment="drug_0", seed=0).X
    control = get_matrix(controls, None)
    return {
        "adata": adata,
        "histories": {"FCR": fcr.history, "scVI": scvi.history},
        "blocks": {f"z_{b}": latent[f"X_fcr_{b}"] for b in BLOCKS},
        "labels": {"covariate": covariate, "treatment": treatment,
                   "condition": np.char.add(np.char.add(covariate, "|"), treatment)},
        "block_r2": block_r2({b: adata.obsm[f"z_{b}"] for b in BLOCKS},
                             {b: latent[f"X_fcr_{b}"] for b in BLOCKS}),
        "means": {"true": mean_log_expression(treated), "predicted": mean_log_expression(predicted),
                  "control": mean_log_expression(control)},
        "degs": rank_genes(treated, control, n_genes=10),
    }


def assert_real_png(path: Path, wanted: Path) -> None:
    """``path`` is ``wanted``, a PNG of more than 5 kB whose pixels are not (nearly) one colour."""
    assert Path(path) == wanted and wanted.is_file()
    data = wanted.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    pixels = mpimg.imread(wanted)[..., :3].reshape(-1, 3)
    assert pixels.std() > 0.02
    assert len(np.unique(pixels, axis=0)) > 16  # drawn in several colours, not just text on white


def test_training_curves_draw_one_panel_per_loss_term(run, tmp_path):
    fcr, scvi = run["histories"]["FCR"], run["histories"]["scVI"]
    terms = loss_terms({"FCR": fcr})
    regularisers = [t for t in fcr.values if t not in ("loss", "elbo", "validation_loss")]
    assert regularisers and terms == ["loss", "elbo", *regularisers, "validation_loss"]
    assert loss_terms({"scVI": scvi}) == ["loss", "elbo", "validation_loss"]
    assert loss_terms({"scVI": scvi, "FCR": fcr}) == terms  # the union, in the same order
    assert_real_png(plot_training_curves(fcr, tmp_path / "fcr.png"), tmp_path / "fcr.png")
    assert_real_png(plot_training_curves(run["histories"], tmp_path / "both.png"), tmp_path / "both.png")
    assert_real_png(plot_histories(run["histories"], tmp_path / "val.png"), tmp_path / "val.png")


def test_training_curves_refuse_an_untrained_history(tmp_path):
    with pytest.raises(DataError, match="no recorded epochs"):
        plot_training_curves(History(), tmp_path / "x.png")
    with pytest.raises(DataError, match="not a History"):
        plot_training_curves({"FCR": {"loss": [1.0]}}, tmp_path / "x.png")


def test_blocks_coloured_by_covariate_treatment_condition_and_a_number(run, tmp_path):
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    labels = {**run["labels"], "library size": np.asarray(run["adata"].X.sum(axis=1)).ravel()}
    wider = {**run["blocks"], "z_all": np.hstack(list(run["blocks"].values()))}  # 6 dims: drawn by PCA/UMAP
    written = plot_blocks(wider, labels, tmp_path / "sub" / "blocks.png", method="pca")
    assert_real_png(written, tmp_path / "sub" / "blocks.png")
    assert plt.get_fignums() == open_figures  # no pyplot figure left open, no backend switched for the user


def test_blocks_refuse_labels_of_another_length(run, tmp_path):
    labels = {"covariate": run["labels"]["covariate"][:-1]}
    with pytest.raises(DataError, match=r"blocks\['z_x'\] 400.*labels\['covariate'\] 399"):
        plot_blocks(run["blocks"], labels, tmp_path / "x.png")


def test_long_legends_are_cut_to_a_readable_length(run, tmp_path):
    levels = [f"donor_{i}" for i in range(40)]
    ax = new_figure(3, 3).subplots()
    _legend(ax, levels, _level_colours(levels))
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == MAX_LEGEND_ENTRIES and texts[0] == "donor_0" and texts[-1] == "... 26 more"
    donors = np.array(levels)[np.arange(400) % 40]
    written = plot_blocks(run["blocks"], {"donor": donors}, tmp_path / "donors.png")
    assert_real_png(written, tmp_path / "donors.png")


def test_embedding_uses_umap_when_installed_and_pca_otherwise(monkeypatch):
    z = np.random.default_rng(0).normal(size=(50, 6))
    small = z[:, :2]
    coords, how = embed_2d(small, method="umap")  # two dimensions are the picture: drawn as they are
    assert how == "dim" and np.array_equal(coords, small)

    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    coords, how = embed_2d(z, method="auto", seed=0)
    assert how == "PCA" and np.allclose(coords, PCA(n_components=2, random_state=0).fit_transform(z))
    with pytest.raises(OptionalDependencyError, match="pip install umap-learn"):
        embed_2d(z, method="umap")

    calls = []

    class FakeUMAP:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, data):
            return data[:, :2] * 10

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    coords, how = embed_2d(z, method="auto", seed=3)
    assert how == "UMAP" and np.array_equal(coords, z[:, :2] * 10)
    assert calls == [{"n_components": 2, "random_state": 3}]
    assert embed_2d(z, method="pca")[1] == "PCA"  # forced, even with umap-learn there
    with pytest.raises(ConfigError, match="'tsne'"):
        embed_2d(z, method="tsne")


def test_block_r2_heat_map(run, tmp_path):
    assert list(run["block_r2"].index) == list(BLOCKS) and list(run["block_r2"].columns) == list(BLOCKS)
    assert_real_png(plot_block_r2(run["block_r2"], tmp_path / "r2.png"), tmp_path / "r2.png")
    with pytest.raises(DataError, match="must hold numbers"):
        plot_block_r2([["high", "low"], ["low", "high"]], tmp_path / "x.png")


def test_prediction_scatter_marks_the_top_degs(run, tmp_path):
    means = run["means"]
    names = list(run["adata"].var_names)
    written = plot_prediction(means["true"], means["predicted"], tmp_path / "pred.png", control_mean=means["control"],
                              gene_names=names, degs=run["degs"], n_degs=10)
    assert_real_png(written, tmp_path / "pred.png")
    alone = plot_prediction(means["true"], means["predicted"], tmp_path / "alone.png")  # no controls: one panel
    assert_real_png(alone, tmp_path / "alone.png")
    # without a ranking, the DEGs are the largest |true - control|
    by_change = _deg_indices(means["true"], means["control"], None, 5)
    change = np.abs(means["true"] - means["control"])
    assert set(by_change) == set(np.argsort(-change)[:5]) and change[by_change[0]] == change.max()
    assert list(_deg_indices(means["true"], means["control"], run["degs"], 3)) == list(run["degs"][:3])


def test_prediction_refuses_vectors_of_different_lengths(run, tmp_path):
    means = run["means"]
    with pytest.raises(DataError, match="true_mean has 40, predicted_mean has 39"):
        plot_prediction(means["true"], means["predicted"][:-1], tmp_path / "x.png")
    with pytest.raises(DataError, match="gene_names has 2"):
        plot_prediction(means["true"], means["predicted"], tmp_path / "x.png", gene_names=["a", "b"])
    with pytest.raises(ConfigError, match="n_degs must be a positive integer, got 0"):
        plot_prediction(means["true"], means["predicted"], tmp_path / "x.png", n_degs=0)


def test_benchmark_writes_its_figure(tmp_path):
    adata, setup = simulated_data("interaction", n_cells=400, n_genes=60, seed=0)  # scores need 50 genes
    train = {**TRAIN, "max_epochs": 2}
    del train["seed"]  # the benchmark sets every recipe's seed itself
    result = run_benchmark(adata, setup, {"FCR": {}}, hold_out=[HoldOut("covariate", "cov_0", "drug_0")],
                           train=train, output=tmp_path, progress=None)
    assert list(result.table.index) == ["FCR", "NoChange", "PerturbedMean", "Additive", "LinearRidge"]
    assert_real_png(result.files["plot"], tmp_path / "benchmark.png")
    with pytest.raises(DataError, match="no score to draw"):
        plot_benchmark(result.table[["epochs"]], tmp_path / "x.png")
