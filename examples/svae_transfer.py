"""sVAE on the sparse-shift simulator: recover which latents each treatment shifts, then transfer to new ones.

sVAE (Lopez et al., CLeaR 2023) gives every treatment a shift ``μ_a`` of the latent prior behind a
learned binary mask: ``z ~ N(γ_a ⊙ μ_a, I)``, with a penalty that keeps the masks ``γ_a`` sparse.
On ``fcrkit.simulate.sparse_shift`` every treatment truly shifts 1-3 of the latents, so the learned
masks can be scored against the true targets (precision, recall and F1 after matching learned to
true latent dimensions).

The transfer protocol (``SVAE.transfer``, docs/recipes/svae.md) handles treatments never seen in training:

1. stage 1: train on the cells of the seen treatments (the new treatments' shifts stay at 0, so
   their cells get the prior N(0, I));
2. stage 2: binarise the masks, give the new treatments all-ones masks, retrain briefly;
3. stage 3: freeze the networks and fit only the new treatments' shifts on half of their cells.

The other half of the new treatments' cells is held out and scored by its importance-weighted
ELBO (IWELBO, ``fcrkit.metrics.likelihood_table``; nats per cell, higher is better) before and
after the transfer.

Run (about 35 s on one CPU core)::

    python examples/svae_transfer.py
    python examples/svae_transfer.py --epochs 100 --warmup 20     # the settings of docs/recipes/svae.md
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fcrkit
from fcrkit.metrics import likelihood_table, mcc, target_scores


def main(argv: list[str] | None = None) -> dict:
    """Train, score the targets, transfer; print and return the scores and the IWELBO table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--treatments", type=int, default=12)
    parser.add_argument("--new", type=int, default=3, help="treatments held out of training, transferred to")
    parser.add_argument("--cells-per-condition", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=80, help="stage 1 epochs")
    parser.add_argument("--warmup", type=int, default=20, help="KL warm-up epochs; the sparsity term starts after it")
    parser.add_argument("--sparsity", type=float, default=10.0, help="λ, the weight of the mask penalty")
    parser.add_argument("--k", type=int, default=100, help="importance samples of the IWELBO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)

    n_latent = 5
    adata = fcrkit.simulate.sparse_shift(n_cells=args.cells_per_condition * (args.treatments + 1), n_genes=50,
                                         n_latent=n_latent, n_treatments=args.treatments, n_hidden=20,
                                         seed=args.seed)
    # set up the whole data set once: the treatment vocabulary (one prior row each) includes the new ones
    fcrkit.setup_anndata(adata, treatment_key="treatment")
    sim = adata.uns["simulation"]
    treatments = list(sim["treatments"])
    new = treatments[-args.new:]
    is_new = adata.obs["treatment"].isin(new).to_numpy()
    seen = adata[~is_new].copy()
    new_cells = np.flatnonzero(is_new)
    fit_cells, held_out = adata[new_cells[0::2]].copy(), adata[new_cells[1::2]].copy()
    print(f"sparse-shift simulator: {adata.n_obs} cells x {adata.n_vars} genes, {n_latent} latents, "
          f"{args.treatments} treatments; new (unseen in training): {', '.join(new)} "
          f"({fit_cells.n_obs} cells to fit, {held_out.n_obs} held out)")

    # stage 1
    model = fcrkit.models.SVAE(seen, n_latent=n_latent, sparsity=args.sparsity, kl_warmup_epochs=args.warmup,
                               n_hidden=64, seed=args.seed)
    start = time.perf_counter()
    model.train(args.epochs, batch_size=64, lr=1e-2, seed=args.seed, accelerator=args.accelerator)
    print(f"stage 1: {args.epochs} epochs on {seen.n_obs} cells in {time.perf_counter() - start:.1f} s")

    # target recovery on the seen treatments: match learned to true dimensions, then compare the masks
    old = [t for t in treatments if t not in new]
    rows = [treatments.index(t) for t in old]
    matching = mcc(seen.obsm["z_true"], model.get_latent_representation()).matching
    scores = target_scores(sim["targets"][rows], model.learned_targets().loc[old].to_numpy(), matching)
    p = float(sim["targets"][rows].mean())  # fraction of true targets: the precision of any random mask
    random_f1 = 2 * p * scores["density"] / (p + scores["density"])
    print(f"\ntarget recovery, {len(old)} seen treatments: F1 {scores['f1']:.3f} (precision "
          f"{scores['precision']:.3f}, recall {scores['recall']:.3f}); masks on {scores['density']:.0%}; "
          f"random masks of that density: F1 {random_f1:.3f}")
    print("learned targets (1 = the treatment shifts that latent):")
    print(model.learned_targets().loc[old].to_string())

    before = likelihood_table(model, held_out, k=args.k, seed=args.seed)
    start = time.perf_counter()
    model.transfer(fit_cells, retrain_epochs=20, max_epochs=50, lr=1e-3, fit_lr=5e-2, batch_size=64,
                   seed=args.seed, accelerator=args.accelerator)
    print(f"\ntransfer (stage 2: 20 epochs, stage 3: 50 epochs) in {time.perf_counter() - start:.1f} s")
    after = likelihood_table(model, held_out, k=args.k, seed=args.seed)

    table = before[["n_cells", "iwelbo"]].rename(columns={"iwelbo": "iwelbo_before"})
    table["iwelbo_after"] = after["iwelbo"]
    table["gain"] = table["iwelbo_after"] - table["iwelbo_before"]
    table["true_targets"] = [int(sim["targets"][treatments.index(t)].sum()) for t in table.index]
    print(f"held-out IWELBO (k = {args.k}, nats per cell) of the new treatments, before / after transfer:")
    print(table.to_string(float_format="{:.1f}".format))
    weights = table["n_cells"] / table["n_cells"].sum()
    print(f"mean IWELBO of held-out new-treatment cells: before {(weights * table['iwelbo_before']).sum():.1f}, "
          f"after {(weights * table['iwelbo_after']).sum():.1f} (gain {(weights * table['gain']).sum():.1f} nats)")
    print("\nfitted shifts of the new treatments (columns: learned latents):")
    print(model.shifts().loc[new].round(2).to_string())
    return {"targets": scores, "random_f1": random_f1, "iwelbo": table}


if __name__ == "__main__":
    main()
