"""``fcrkit demo``, the README's main job, at small settings: it runs and writes what it promises."""

from __future__ import annotations

import pandas as pd
import pytest

import fcrkit
import fcrkit.cli
from fcrkit.data.anndata import get_matrix
from fcrkit.metrics import block_mcc, pca_embedding


def test_demo_prints_the_tables_and_writes_the_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert fcrkit.cli.main(["demo", "--cells", "600", "--genes", "50", "--epochs", "3", "--accelerator", "cpu",
                            "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Recovery of the true blocks" in printed and "block identifiability" in printed
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert list(table.index) == ["FCR", "β-VAE", "scVI", "PCA"]
    # the PCA row is reproduced from the same simulated world by the metric the table names
    adata = fcrkit.simulate.interaction(n_cells=600, n_genes=50, seed=0)
    true = {b: adata.obsm[f"z_{b}"] for b in ("x", "t", "tx")}
    pca = block_mcc(true, pca_embedding(get_matrix(adata, None), 6, seed=0))
    for block in ("x", "t", "tx"):
        assert table.loc["PCA", f"MCC z_{block}"] == pytest.approx(pca[block], abs=1e-6)
    assert table.loc["PCA", "MCC all"] == pytest.approx(pca["all"], abs=1e-6)
    assert (table.loc[["FCR", "β-VAE", "scVI"], "train s"] > 0).all()
    figures = ("training_curves.png", "fcr_blocks.png", "fcr_block_r2.png", "fcr_prediction.png")
    assert sorted(p.name for p in out.iterdir()) == sorted([*figures, "comparison.csv"])
    for name in figures:
        assert (out / name).stat().st_size > 5_000
