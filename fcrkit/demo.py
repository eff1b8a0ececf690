"""The main job: FCR and two baselines from the same parts on the interaction simulator.

Every method is scored the same way: one square Hungarian match of all true latent dimensions
against the same number of learned ones (:func:`fcrkit.metrics.block_mcc`). FCR also predicts one
treated condition from the controls of its covariate (:data:`PREDICTED`), scored against the real
treated cells.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from fcrkit import progress
from fcrkit.data import simulate
from fcrkit.data.anndata import get_matrix, setup_anndata
from fcrkit.metrics import (
    block_cluster_scores,
    block_mcc,
    block_r2,
    mean_log_expression,
    pca_embedding,
    prediction_scores,
    rank_genes,
)
from fcrkit.models import FCR, SCVI, BetaVAE

BLOCKS = ("x", "t", "tx")
#: The (covariate, treatment) condition FCR predicts from the controls of that covariate.
PREDICTED = ("cov_0", "drug_0")
N_DEGS = 20


@dataclass
class DemoResult:
    """What the demo measured and wrote.

    ``table``: MCC per method; ``block_r2`` and ``clustering``: FCR's block R² and NMI / ARI tables;
    ``prediction``: :func:`~fcrkit.metrics.prediction_scores` of FCR's prediction of
    :data:`PREDICTED` (with ``r2_top20`` over the top DEGs); ``files``: the figures and table written.
    """

    table: pd.DataFrame
    block_r2: pd.DataFrame
    clustering: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    prediction: dict[str, float | int | None] = field(default_factory=dict)


def run_demo(
    n_cells: int = 3000,
    n_genes: int = 200,
    epochs: int = 60,
    *,
    seed: int = 0,
    output: str | Path | None = "fcrkit-demo",
    accelerator: str = "auto",
    progress_bar: bool | None = None,
) -> DemoResult:
    """Simulate, train FCR, a β-VAE and scVI, score them, and write figures to ``output``.

    Args:
        n_cells: cells simulated by :func:`fcrkit.simulate.interaction`.
        n_genes: genes simulated.
        epochs: training epochs of every model.
        seed: seed of the simulation, the models and the scores.
        output: folder for ``training_curves.png`` (every model's loss terms), ``fcr_blocks.png``
            (FCR's blocks coloured by covariate, treatment and condition), ``fcr_block_r2.png``,
            ``fcr_prediction.png`` and ``comparison.csv``; None writes nothing.
        accelerator: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress_bar: show training progress and say what phase is running (None: in notebooks and
            terminals, not in CI; see :mod:`fcrkit.progress`).

    Returns:
        The tables and the files written.
    """
    progress.phase(f"simulating {n_cells} cells x {n_genes} genes", progress_bar)
    adata = simulate.interaction(n_cells=n_cells, n_genes=n_genes, seed=seed)
    setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    true = {b: adata.obsm[f"z_{b}"] for b in BLOCKS}
    n_latent = sum(z.shape[1] for z in true.values())
    models = {
        "FCR": FCR(adata, n_latent={b: true[b].shape[1] for b in BLOCKS}, seed=seed),
        "β-VAE": BetaVAE(adata, n_latent=n_latent, seed=seed),
        "scVI": SCVI(adata, n_latent=n_latent, seed=seed),
    }
    rows, histories, latents = [], {}, {}
    for name, model in models.items():
        progress.phase(f"training {name} ({epochs} epochs)", progress_bar)
        start = time.perf_counter()
        histories[name] = model.train(max_epochs=epochs, batch_size=256, lr=3e-3, seed=seed,
                                      accelerator=accelerator, progress_bar=progress_bar)
        seconds = time.perf_counter() - start
        latent = model.get_latent_representation(as_dict=True)
        latents[name] = latent
        rows.append({"method": name, **_mcc_columns(true, np.hstack(list(latent.values()))), "train s": seconds})
    progress.phase("scoring: identifiability of each model's latents, FCR's blocks and predictions", progress_bar)
    pca = pca_embedding(get_matrix(adata, None), n_latent, seed=seed)
    rows.append({"method": "PCA", **_mcc_columns(true, pca), "train s": np.nan})
    table = pd.DataFrame(rows).set_index("method")

    fcr = {b: latents["FCR"][f"X_fcr_{b}"] for b in BLOCKS}
    labels = {"covariate": adata.obs["covariate"].to_numpy(), "treatment": adata.obs["treatment"].to_numpy(),
              "condition": (adata.obs["covariate"].astype(str) + "|" + adata.obs["treatment"].astype(str)).to_numpy()}
    means = _counterfactual(models["FCR"], adata, seed)
    result = DemoResult(table, block_r2(true, fcr, regressor="kernel", seed=seed),
                        block_cluster_scores(fcr, labels, seed=seed), prediction=means.pop("scores"))
    if output is not None:
        from fcrkit import plotting

        out = Path(output)
        progress.phase(f"writing figures and tables to {str(out)!r}", progress_bar)
        out.mkdir(parents=True, exist_ok=True)
        covariate, treatment = PREDICTED
        result.files += [
            plotting.plot_training_curves(histories, out / "training_curves.png"),
            plotting.plot_blocks({f"z_{b}": z for b, z in fcr.items()}, labels, out / "fcr_blocks.png", seed=seed),
            plotting.plot_block_r2(result.block_r2, out / "fcr_block_r2.png",
                                   title="FCR block R² (kernel ridge, held-out cells)"),
            plotting.plot_prediction(means["true"], means["predicted"], out / "fcr_prediction.png",
                                     control_mean=means["control"], gene_names=list(adata.var_names),
                                     degs=means["degs"], n_degs=len(means["degs"]),
                                     title=f"FCR: {covariate} controls -> {treatment}"),
        ]
        table.to_csv(out / "comparison.csv")
        result.files.append(out / "comparison.csv")
    return result


def _counterfactual(model: FCR, adata: AnnData, seed: int) -> dict:
    """FCR's prediction of :data:`PREDICTED` from that covariate's controls, against its real treated cells.

    Returns the :func:`~fcrkit.metrics.mean_log_expression` vectors ``true``, ``predicted`` and
    ``control``, the top DEGs ``degs`` (:func:`~fcrkit.metrics.rank_genes`, treated vs control
    cells) and the ``scores`` of :func:`~fcrkit.metrics.prediction_scores` over those DEGs.
    """
    covariate, treatment = PREDICTED
    in_covariate = adata.obs["covariate"].astype(str).to_numpy() == covariate
    given = adata.obs["treatment"].astype(str).to_numpy()
    controls = adata[in_covariate & (given == "control")].copy()
    treated = get_matrix(adata[in_covariate & (given == treatment)], None)
    control = get_matrix(controls, None)
    predicted = model.predict(controls, treatment=treatment, seed=seed).X
    n_degs = min(N_DEGS, adata.n_vars)
    degs = rank_genes(treated, control, n_genes=n_degs)
    scores = prediction_scores(treated, predicted, control, top_k=(n_degs,), mse_k=n_degs, degs=degs)
    return {"true": mean_log_expression(treated), "predicted": mean_log_expression(predicted),
            "control": mean_log_expression(control), "degs": degs, "scores": scores}


def _mcc_columns(true: dict[str, np.ndarray], learned: np.ndarray) -> dict[str, float]:
    """The table's MCC columns: one per true block and the overall value."""
    return {("MCC all" if block == "all" else f"MCC z_{block}"): value
            for block, value in block_mcc(true, learned).items()}
