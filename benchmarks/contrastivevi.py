"""ContrastiveVI on ``fcrkit.simulate.contrastive``: which block holds the subgroups, which the cell types.

The world, the training and the scores are those of ``tests/test_contrastivevi.py`` (imported from it, so
the two cannot drift apart), over several seeds; ``--concat`` adds the same model with the ``concat``
combiner instead of ``masked`` (the salient block then reaches the decoder for background cells too, so
nothing tells the two blocks apart: the ablation the margins are measured against). Prints one row per
seed and model; the numbers are in ``docs/recipes/contrastivevi.md``.

    python benchmarks/contrastivevi.py [--seeds 0 1 2 3 4] [--concat]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.test_contrastivevi


def run(seed: int, combiner: str) -> dict[str, float | int | str]:
    """One seed's scores for ContrastiveVI with ``combiner`` (``"masked"``, the recipe's, or ``"concat"``)."""
    import torch

    torch.set_num_threads(1)
    import fcrkit
    from fcrkit.spec import ComponentSpec
    from tests.test_contrastivevi import MODEL, TRAIN, block_scores, contrastive_world

    adata = contrastive_world(seed)
    spec = fcrkit.models.contrastivevi_spec(**MODEL)
    if combiner != "masked":
        spec = dataclasses.replace(spec, combiner=ComponentSpec(combiner))
    model = fcrkit.models.Model(adata, spec)
    start = time.perf_counter()
    model.train(**TRAIN, seed=seed)
    seconds = time.perf_counter() - start
    scores = block_scores(adata, model.get_latent_representation())
    return {"seed": seed, "combiner": combiner, **{k: round(v, 3) for k, v in scores.items()},
            "train_s": round(seconds, 1)}


def main() -> None:
    """Parse the arguments, run every seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--concat", action="store_true", help="also the ablation with the concat combiner")
    args = parser.parse_args()
    combiners = ["masked", "concat"] if args.concat else ["masked"]
    rows = [run(seed, combiner) for combiner in combiners for seed in args.seeds]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(table.drop(columns="seed").groupby("combiner", sort=False).median().to_string())


if __name__ == "__main__":
    main()
