"""FCR on Kang IFN-β PBMC: hold out one cell type's stimulated cells, predict them counterfactually.

Kang et al. 2018: peripheral blood mononuclear cells, control (``CTRL``) or stimulated with
interferon-β (``STIM``), 13 cell types, raw UMI counts. The protocol:

1. hold out the stimulated cells of one cell type (default ``CD14 Mono``) and train FCR on the rest
   (the highly variable genes of the training cells, Seurat v3);
2. predict that cell type's stimulated expression from its own control cells with
   ``model.predict(controls, treatment="STIM")``: each control keeps its covariate block ``z_x``,
   while ``z_t`` and ``z_tx`` are redrawn from their priors under (cell type, STIM);
3. score the prediction with ``fcrkit.metrics.prediction_scores``: R² of log1p of the mean
   normalised expression against the held-out truth, over all genes and over the top-20/50
   differentially expressed genes (true stimulated cells against their controls), next to two
   answers that need no model: *no change* (the controls themselves) and *additive* (the controls
   plus the mean stimulated-minus-control shift of the other cell types).

The data live beside the project in ``../shared/data/kang_ifnb2800.h5ad`` (not in the repository).

Run (about 35 s on one CPU core)::

    python examples/fcr_kang_counterfactual.py --data ../shared/data/kang_ifnb2800.h5ad
    python examples/fcr_kang_counterfactual.py --cell-type "CD4 Naive T" --genes 2000 --epochs 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np

import fcrkit
from fcrkit.metrics import additive_baseline, block_cluster_scores, mean_log_expression, prediction_scores

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang_ifnb2800.h5ad"


def main(argv: list[str] | None = None) -> dict:
    """Train FCR on Kang without the held-out cells; print and return the prediction scores and block NMIs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="kang_ifnb2800.h5ad (raw counts)")
    parser.add_argument("--cell-type", default="CD14 Mono", help="the cell type whose stimulated cells are held out")
    parser.add_argument("--genes", type=int, default=500, help="highly variable genes of the training cells")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)

    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found. This example needs the Kang IFN-β data set "
                 "(kang_ifnb2800.h5ad, in ../shared/data beside the project); pass its path with --data.")
    adata = ad.read_h5ad(args.data)
    cell_type, sample = adata.obs["cell_type"].astype(str), adata.obs["sample"].astype(str)
    if args.cell_type not in set(cell_type):
        sys.exit(f"error: no cell type {args.cell_type!r}; cell types: {sorted(set(cell_type))}")

    is_type, stim = (cell_type == args.cell_type).to_numpy(), (sample == "STIM").to_numpy()
    held_out = is_type & stim
    # genes chosen on the training cells only (Seurat v3 on their counts): the held-out cells must not shape the model
    genes = fcrkit.data.highly_variable_genes(adata[~held_out], n_top_genes=args.genes, inplace=False)
    adata = adata[:, genes["highly_variable"].to_numpy()].copy()
    train = adata[~held_out].copy()
    fcrkit.setup_anndata(train, treatment_key="sample", control_value="CTRL", covariate_keys=["cell_type"])
    controls = adata[is_type & ~stim].copy()
    truth = adata[held_out].X
    print(f"Kang IFN-β: {adata.n_obs} cells x {adata.n_vars} genes; held out: {held_out.sum()} stimulated "
          f"{args.cell_type} cells; training on {train.n_obs} cells; predicting from {controls.n_obs} controls")

    model = fcrkit.models.FCR(train, likelihood="nb", n_latent=10, seed=args.seed)
    start = time.perf_counter()
    model.train(max_epochs=args.epochs, batch_size=256, seed=args.seed, accelerator=args.accelerator)
    print(f"trained FCR for {len(model.history)} epochs in {time.perf_counter() - start:.1f} s")

    # the counterfactual: the held-out cell type's controls, as if stimulated
    predicted = model.predict(controls, treatment="STIM", seed=args.seed)
    scores = {"FCR": prediction_scores(truth, predicted.X, controls.X)}
    scores["no change"] = prediction_scores(truth, control_counts=controls.X,
                                            pred_mean=mean_log_expression(controls.X))
    others = []  # (stimulated, control) counts of every other cell type: the additive answer's shift
    for other in sorted(set(cell_type) - {args.cell_type}):
        is_other = (cell_type == other).to_numpy()
        if (is_other & stim).sum() > 1 and (is_other & ~stim).sum() > 1:
            others.append((adata[is_other & stim].X, adata[is_other & ~stim].X))
    scores["additive"] = prediction_scores(truth, control_counts=controls.X,
                                           pred_mean=additive_baseline(controls.X, others))

    print(f"\nprediction of stimulated {args.cell_type} (R² of log1p mean normalised expression; "
          "DEGs: true stimulated vs controls)")
    print(f"{'answer':<12}{'r2_all':>9}{'r2_top50':>10}{'r2_top20':>10}{'mse_top20':>11}")
    for name, s in scores.items():
        print(f"{name:<12}{s['r2_all']:>9.3f}{s['r2_top50']:>10.3f}{s['r2_top20']:>10.3f}{s['mse_top20']:>11.3f}")
    fcr, none = scores["FCR"], scores["no change"]
    print(f"\nFCR vs no change: R² all genes {fcr['r2_all']:.3f} vs {none['r2_all']:.3f}; "
          f"top-50 DEGs {fcr['r2_top50']:.3f} vs {none['r2_top50']:.3f}")

    # the blocks: z_x should cluster by cell type, z_t by stimulation
    latent = model.get_latent_representation()
    nmi = block_cluster_scores({b: latent[f"X_fcr_{b}"] for b in ("x", "t")},
                               {key: train.obs[key].to_numpy() for key in ("cell_type", "sample")})
    print("\nclustering of each block (NMI of k-means clusters against each label):")
    print(nmi[["nmi_cell_type", "nmi_sample"]].round(3).to_string())
    print(f"\nmean predicted counts per cell: {np.asarray(predicted.X.sum(1)).mean():.0f} "
          f"(true stimulated: {np.asarray(truth.sum(1)).mean():.0f})")
    return {"scores": scores, "nmi": nmi}


if __name__ == "__main__":
    main()
