"""Does 2-process FCR training match 1-process training at the same global batch? (issue 18, item 4)

Per seed, FCR on ``fcrkit.simulate.interaction`` is trained three ways with the same seed, epochs
and learning rate: one process at batch ``2B``; two gloo processes at ``B`` each (``strategy="ddp",
devices=2``) with the global-batch regularisers (HSIC-style kernels and FCR's permutation
discriminators see the whole global batch); and two processes with those regularisers forced to
their rank's half (``global_batch = False``), the behaviour before. Prints the loss curve (training
loss at a quarter, half and all of the epochs), the final validation -ELBO and the z_tx / overall
MCC (``fcrkit.metrics.block_mcc``), per seed and the mean over seeds, as a markdown table.

    python benchmarks/ddp_agreement.py [--seeds 0 1 2] [--cells 1500] [--genes 60] [--epochs 40] [--batch 128]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

BLOCKS = ("x", "t", "tx")
RUNS = (("1 process", 1, True), ("2 processes", 2, True), ("2 processes, local terms", 2, False))


def run(seed: int, n_cells: int, n_genes: int, epochs: int, batch: int) -> list[dict]:
    """The three runs' rows for one seed."""
    import torch

    torch.set_num_threads(1)
    import fcrkit
    from fcrkit.metrics import block_mcc

    adata = fcrkit.simulate.interaction(n_cells=n_cells, n_genes=n_genes, seed=seed)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    true = {b: adata.obsm[f"z_{b}"] for b in BLOCKS}
    rows = []
    for name, processes, whole in RUNS:
        model = fcrkit.models.FCR(adata, n_latent={b: 2 for b in BLOCKS}, seed=seed)
        for reg in model.module.regularizers.values():
            if getattr(reg, "global_batch", False) and not whole:
                reg.global_batch = False  # an instance attribute: pickled to the workers with the model
        settings = {"max_epochs": epochs, "lr": 3e-3, "seed": seed, "accelerator": "cpu", "progress_bar": False}
        start = time.perf_counter()
        if processes == 1:
            history = model.train(batch_size=2 * batch, **settings)
        else:
            history = model.train(batch_size=batch, strategy="ddp", devices=processes, **settings)
        latent = model.get_latent_representation()
        mcc = block_mcc(true, np.hstack([latent[f"X_fcr_{b}"] for b in BLOCKS]), seed=seed)
        loss = history["loss"]
        rows.append({"seed": seed, "run": name, "loss_q": loss[epochs // 4 - 1], "loss_h": loss[epochs // 2 - 1],
                     "loss": loss[-1], "val": history["validation_loss"][-1], "mcc_tx": mcc["tx"],
                     "mcc": mcc["all"], "seconds": time.perf_counter() - start})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    """Run the seeds one after the other and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", type=int, default=1500)
    parser.add_argument("--genes", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128, help="per-process batch of the 2-process runs")
    args = parser.parse_args()
    rows = [row for seed in args.seeds for row in run(seed, args.cells, args.genes, args.epochs, args.batch)]
    header = ("| seed | run | loss @25% | loss @50% | loss @100% | val -ELBO | MCC z_tx | MCC all | s |\n"
              "|---|---|---|---|---|---|---|---|---|")
    print(header)
    for r in rows:
        print(f"| {r['seed']} | {r['run']} | {r['loss_q']:.2f} | {r['loss_h']:.2f} | {r['loss']:.2f} | {r['val']:.2f} "
              f"| {r['mcc_tx']:.3f} | {r['mcc']:.3f} | {r['seconds']:.0f} |")
    for name, _, _ in RUNS:
        mine = [r for r in rows if r["run"] == name]
        means = {k: np.mean([r[k] for r in mine]) for k in ("loss_q", "loss_h", "loss", "val", "mcc_tx", "mcc")}
        print(f"| mean | {name} | {means['loss_q']:.2f} | {means['loss_h']:.2f} | {means['loss']:.2f} | "
              f"{means['val']:.2f} | {means['mcc_tx']:.3f} | {means['mcc']:.3f} | |")


if __name__ == "__main__":
    main()
