"""A third-party regulariser: write it, register it as a plugin, check it, and use it in FCR.

A regulariser is any object with ``loss(ctx)`` (a scalar per-cell mean that fcrkit multiplies by the
spec's weight and adds to the negative ELBO), built by a factory ``f(info, **options)``. A package
ships it as a *plugin*: an object with an ``@fcrkit.hookimpl`` function ``fcrkit_register_components``
that registers the factory under a name. An installed package names that object in the ``fcrkit``
entry-point group of its ``pyproject.toml`` (see docs/plugins.md and ``plugins/fcrkit-template``);
this script registers it at run time with ``fcrkit.registry.register_plugin``, which is what the
entry point does for you.

The regulariser here, ``mylab_xcorr``, is a cross-correlation penalty between two latent blocks
(XCov, Cheung et al. 2014): the mean squared Pearson correlation, over the minibatch, between every
dimension of one block's posterior means and every dimension of the other's. The script

1. checks it with ``fcrkit.testing.check_component`` (shapes, finite values, gradients);
2. adds it to FCR through the spec (``regularizers=[{"name": "mylab_xcorr", ...}]``) to decorrelate
   the covariate block ``z_x`` from the interaction block ``z_tx``;
3. trains FCR with and without it (same data, same seeds), prints the term in the training history,
   and measures the penalised quantity on all cells for both models.

Run (about 20 s on one CPU core)::

    python examples/third_party_regularizer.py
    python examples/third_party_regularizer.py --weight 50 --blocks x,t
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import fcrkit
from fcrkit.errors import ConfigError
from fcrkit.protocols import Context, ModelInfo
from fcrkit.registry import register_plugin
from fcrkit.testing import check_component


# -- the third-party part: this is what a package `mylab` would ship ----------------------------------------
def squared_cross_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over (i, j) of corr(a_i, b_j)² across the rows (cells) of ``a`` and ``b``."""
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    a = a / (a.pow(2).mean(0, keepdim=True) + eps).sqrt()
    b = b / (b.pow(2).mean(0, keepdim=True) + eps).sqrt()
    return (a.T @ b / a.shape[0]).pow(2).mean()


class CrossCorrelation:
    """Cross-correlation penalty between two latent blocks (XCov): mean squared correlation of their means.

    Args:
        info: the model the regulariser joins (fcrkit passes it).
        blocks: the two blocks to decorrelate.
    """

    def __init__(self, info: ModelInfo, *, blocks: tuple[str, str] | list[str] = ("x", "tx")):
        unknown = [b for b in blocks if b not in info.block_dims]
        if len(blocks) != 2 or unknown:
            raise ConfigError(f"regularizer 'mylab_xcorr': blocks={list(blocks)} must name two blocks of the "
                              f"model; its blocks are {sorted(info.block_dims)}.")
        self.blocks = tuple(blocks)

    def loss(self, ctx: Context) -> torch.Tensor:
        a, b = (ctx.loc[block] for block in self.blocks)
        return squared_cross_correlation(a, b)


class MyLabPlugin:
    """The plugin object: what `[project.entry-points.fcrkit] mylab = "mylab.fcrkit_plugin"` would point at."""

    @fcrkit.hookimpl
    def fcrkit_register_components(self, registry):
        registry.regularizer("mylab_xcorr", CrossCorrelation)


# -- the user's part -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    """Check, register and train with the plugin; print and return what was measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--genes", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--weight", type=float, default=20.0, help="weight of the penalty in the loss")
    parser.add_argument("--blocks", default="x,tx", help="the two FCR blocks to decorrelate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    blocks = args.blocks.split(",")

    # 1. the conformance check a plugin's own test suite would run (raises ConformanceError on a problem)
    check_component("regularizer", CrossCorrelation, {"blocks": blocks})
    print(f"check_component: mylab_xcorr conforms to the regularizer protocol (blocks {blocks})")

    # 2. register the plugin, as the entry point of an installed package would
    registry = register_plugin(MyLabPlugin(), name="mylab")
    record = registry.get("regularizer", "mylab_xcorr")
    print(f"registered: {record.kind} {record.name!r} from plugin {record.plugin!r}: {record.summary}")

    adata = fcrkit.simulate.interaction(n_cells=args.cells, n_genes=args.genes, seed=args.seed)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"], control_value="control")

    def train(weight: float) -> fcrkit.models.FCR:
        extra = [{"name": "mylab_xcorr", "weight": weight, "blocks": blocks}] if weight else []
        model = fcrkit.models.FCR(adata, n_latent=2, n_hidden=64, regularizers=extra, seed=args.seed)
        model.train(max_epochs=args.epochs, batch_size=128, seed=args.seed, accelerator=args.accelerator)
        return model

    results = {}
    for weight in (0.0, args.weight):
        model = train(weight)
        latent = model.get_latent_representation()
        a, b = (torch.as_tensor(latent[f"X_fcr_{block}"]) for block in blocks)
        history = model.history
        results[weight] = {
            "xcorr": float(squared_cross_correlation(a, b)),
            "max_abs_corr": float(np.abs(np.corrcoef(a.T.numpy(), b.T.numpy())[:a.shape[1], a.shape[1]:]).max()),
            "validation_loss": history["validation_loss"][-1],
            "terms": list(history.values),
            "penalty": list(history["mylab_xcorr"]) if "mylab_xcorr" in history else [],
        }
        terms = [k for k in history.values if k not in ("loss", "elbo", "validation_loss")]
        print(f"\nFCR, mylab_xcorr weight {weight:g}: history terms {terms}")
        if "mylab_xcorr" in history:
            term = history["mylab_xcorr"]
            print(f"  mylab_xcorr (unweighted, per epoch): first {term[0]:.4f}, last {term[-1]:.4f}")

    print(f"\non all {adata.n_obs} cells, between z_{blocks[0]} and z_{blocks[1]} (posterior means):")
    print(f"{'weight':>8}{'mean corr²':>12}{'max |corr|':>12}{'validation loss':>17}")
    for weight, r in results.items():
        print(f"{weight:>8g}{r['xcorr']:>12.4f}{r['max_abs_corr']:>12.3f}{r['validation_loss']:>17.1f}")
    without, with_ = results[0.0]["xcorr"], results[args.weight]["xcorr"]
    print(f"\nthe penalty lowered the mean squared cross-correlation from {without:.4f} to {with_:.4f} "
          f"({with_ / without:.0%} of its value without it)")
    return {"registered": (record.kind, record.name, record.plugin), "by_weight": results}


if __name__ == "__main__":
    main()
