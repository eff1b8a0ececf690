"""``fcrkit demo``, the README's main job, at small settings: it runs and writes what it promises."""

from __future__ import annotations

import numpy as np
import pandas as pd

import fcrkit.cli


def test_demo_prints_the_tables_and_writes_the_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert fcrkit.cli.main(["demo", "--cells", "600", "--genes", "50", "--epochs", "3", "--accelerator", "cpu",
                            "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Recovery of the true blocks" in printed and "block identifiability" in printed
    table = pd.read_csv(out / "comparison.csv", index_col=0)
    assert list(table.index) == ["FCR", "β-VAE", "scVI", "PCA"]
    mcc = table[["MCC z_x", "MCC z_t", "MCC z_tx", "MCC all"]].to_numpy()
    assert np.isfinite(mcc).all() and ((mcc > 0) & (mcc <= 1)).all()
    assert (table.loc[["FCR", "β-VAE", "scVI"], "train s"] > 0).all()
    figures = ("training_curves.png", "fcr_blocks.png", "fcr_block_r2.png", "fcr_prediction.png")
    assert sorted(p.name for p in out.iterdir()) == sorted([*figures, "comparison.csv"])
    for name in figures:
        assert (out / name).stat().st_size > 5_000
