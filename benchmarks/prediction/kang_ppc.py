"""Posterior predictive checks of SCVI and FCR on Kang (all cells, the 2000 most variable genes).

    python benchmarks/prediction/kang_ppc.py      # writes results/kang_ppc/{ppc.csv,ppc.png}

Each model trains 30 epochs (batch 256, seed 0, CPU); three draws of counts for every cell are compared
with the data gene by gene (fcrkit.metrics.posterior_predictive_check).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd
import torch

import fcrkit
import fcrkit.plotting

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "results" / "kang_ppc"


def main() -> None:
    """Train both models, check them, write the table and the figure."""
    torch.set_num_threads(1)
    adata = ad.read_h5ad(ROOT.parent / "shared" / "data" / "kang_ifnb2800.h5ad")
    fcrkit.data.highly_variable_genes(adata, n_top_genes=2000, subset=True)
    fcrkit.setup_anndata(adata, treatment_key="sample", control_value="CTRL", covariate_keys=["cell_type"])
    results, rows = {}, []
    for name, model in (("SCVI", fcrkit.models.SCVI(adata, seed=0)), ("FCR", fcrkit.models.FCR(adata, n_latent=10,
                                                                                                seed=0))):
        model.train(max_epochs=30, batch_size=256, accelerator="cpu", seed=0)
        results[name] = check = fcrkit.metrics.posterior_predictive_check(model, n_samples=3, seed=0)
        rows += [{"model": name, "statistic": stat, **check.table.loc[stat].to_dict()} for stat in check.table.index]
        rows.append({"model": name, "statistic": "score (mean MAE)", "mae": check.score})
        print(name, check.table.round(3).to_string(), f"score {check.score:.3f}", sep="\n", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(OUT / "ppc.csv", index=False)
    fcrkit.plotting.plot_ppc(results, OUT / "ppc.png")


if __name__ == "__main__":
    main()
