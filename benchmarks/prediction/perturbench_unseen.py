"""Prepare the unseen-pair task on the PerturBench development set: its data and its training-only features.

The nine targets crossed with all four cell lines are kept (plus the controls); each (target, cell line)
pair becomes its own treatment ``TARGET@line``, so the unseen-perturbation task holds a pair out
entirely. A pair's features are derived from the *training cells of the split only*:

1. for every training pair, its change ``Δ = mean_log(pair) - mean_log(controls of its line)``;
2. the pair's raw feature: the mean ``Δ`` of the same target in the *other* lines where that target is in
   training (leave-own-line-out for every pair, held out or not, so the features of training and held-out
   pairs are made alike; a held-out pair's own cells are never read); a training pair whose target is
   in training in no other line has none, and its cells are left out of the data;
3. PCA fitted on the training pairs' ``Δ`` (the training responses), 10 components, applied to the raw
   features.

Then ``fcrkit benchmark benchmarks/prediction/perturbench_unseen.toml``. Run from the repository root::

    python benchmarks/prediction/perturbench_unseen.py              # the data and the features
    python benchmarks/prediction/perturbench_unseen.py systematic   # after the benchmark: a reference

``systematic`` prints the PearsonΔ of a reference that is not among the four baselines: each held-out
pair answered by the mean of the *training perturbed cells of its own line* (Systema's systematic
variation, per line), which needs no treatment information at all.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from fcrkit import metrics
from fcrkit.runconfig import tomllib
from fcrkit.tasks import TASKS

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "shared" / "data" / "perturbench_devel_norman19_mcfaline23.h5ad"
OUT = HERE / "results" / "perturbench_unseen"
N_COMPONENTS = 10


def pair_data() -> ad.AnnData:
    """Controls and the crossed targets' cells, treatment ``TARGET@line`` (controls ``control``)."""
    adata = ad.read_h5ad(SOURCE)
    adata = adata[adata.obs["recovery_exact"].astype(bool)].copy()  # two cells' counts are not exact
    table = pd.crosstab(adata.obs["perturbation"], adata.obs["cell_type"])
    crossed = [p for p in table.index if p != "control" and (table.loc[p] > 0).all()]
    keep = adata.obs["perturbation"].isin(["control", *crossed]).to_numpy()
    adata = adata[keep].copy()
    pert, line = adata.obs["perturbation"].astype(str), adata.obs["cell_type"].astype(str)
    adata.obs["pair"] = np.where(pert == "control", "control", pert + "@" + line)
    adata.obs = adata.obs[["perturbation", "cell_type", "pair"]]
    del adata.layers["lognorm_original"]
    return adata


def training_features(adata: ad.AnnData, train: np.ndarray) -> pd.DataFrame:
    """Every pair's features from the training cells (``train``, bool per cell) only; see the module doc."""
    obs = adata.obs[train]
    counts = adata.X[np.flatnonzero(train)]
    profiles = {key: metrics.mean_log_expression(counts[np.flatnonzero((obs["pair"] == key[0]).to_numpy()
                                                                        & (obs["cell_type"] == key[1]).to_numpy())])
                for key in set(zip(obs["pair"], obs["cell_type"]))}
    delta = {pair: p - profiles[("control", line)] for (pair, line), p in profiles.items() if pair != "control"}
    pairs = sorted(set(adata.obs["pair"]) - {"control"})
    raw = {}
    for pair in pairs:
        target, line = pair.split("@")
        others = [d for other, d in delta.items() if other.split("@")[0] == target and other.split("@")[1] != line]
        if others:
            raw[pair] = np.mean(others, axis=0)
    pca = PCA(n_components=N_COMPONENTS, random_state=0).fit(np.stack(list(delta.values())))
    values = pca.transform(np.stack(list(raw.values())))
    return pd.DataFrame(values, index=list(raw), columns=[f"pc_{k}" for k in range(N_COMPONENTS)])


def systematic() -> None:
    """PearsonΔ (all genes, top-20 DEGs) of the per-line perturbed training mean on each held-out pair."""
    adata = ad.read_h5ad(OUT / "pairs.h5ad")
    task = dict(tomllib.loads((HERE / "perturbench_unseen.toml").read_text())["task"])
    (split,) = TASKS[task.pop("kind")](adata.obs, "pair", **task)
    train = ~split.held_out_mask(adata.obs, "pair")
    pair, line = adata.obs["pair"].to_numpy(), adata.obs["cell_type"].to_numpy()
    rows = []
    for hold in split.hold_out:
        in_line = line == hold.value
        controls = adata.X[np.flatnonzero(in_line & (pair == "control"))]
        truth = adata.X[np.flatnonzero(pair == hold.treatment)]
        perturbed = adata.X[np.flatnonzero(in_line & train & (pair != "control"))]
        t, c, p = (metrics.mean_log_expression(m) for m in (truth, controls, perturbed))
        top = metrics.rank_genes(truth, controls, n_genes=adata.n_vars)[:20]
        rows.append((hold.treatment, metrics.pearson_delta(t, p, c), metrics.pearson_delta(t, p, c, top)))
    table = pd.DataFrame(rows, columns=["pair", "pearson_delta", "pearson_delta20"]).set_index("pair")
    print(table.round(3).to_string())
    print("mean", table.mean().round(3).to_dict())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    adata = pair_data()
    task = dict(tomllib.loads((HERE / "perturbench_unseen.toml").read_text())["task"])  # the split it will run
    (split,) = TASKS[task.pop("kind")](adata.obs, "pair", **task)
    train = ~split.held_out_mask(adata.obs, "pair")
    features = training_features(adata, train)
    # a training pair whose target is in training in no other line has no features: its cells are left out
    lacking = sorted(set(adata.obs["pair"]) - set(features.index) - {"control"})
    adata = adata[~adata.obs["pair"].isin(lacking).to_numpy()].copy()
    adata.write_h5ad(OUT / "pairs.h5ad")
    features.to_csv(OUT / "features.csv")
    print(f"{adata.n_obs} cells, {len(features)} pairs (left out, no features: {', '.join(lacking) or 'none'}); "
          f"held out: {split.name}; wrote {OUT}")


if __name__ == "__main__":
    import sys

    systematic() if sys.argv[1:] == ["systematic"] else main()
