"""The ``fcrkit`` command line: ``fcrkit components``, ``fcrkit demo``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fcrkit.errors import FcrkitError
from fcrkit.protocols import KINDS


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_components(args: argparse.Namespace) -> int:
    from fcrkit.registry import get_registry

    registry = get_registry()
    rows = [(r.kind, r.name, r.plugin, r.origin, r.summary) for r in registry.records(args.kind)]
    print(format_table(("kind", "name", "plugin", "from", "summary"), rows))
    if registry.failures:
        print("\nPlugins that failed to load:")
        rows = [(f.plugin, f.origin, " ".join(f.error.split())) for f in registry.failures]  # one line each
        print(format_table(("plugin", "from", "error"), rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    import fcrkit
    from fcrkit.data.anndata import get_matrix
    from fcrkit.metrics import knn_accuracy, linear_r2, pca_embedding

    print(f"fcrkit {fcrkit.__version__} demo: scVI on the built-in simulator "
          f"({args.cells} cells x {args.genes} genes, seed {args.seed})")
    adata = fcrkit.simulate.basic(n_cells=args.cells, n_genes=args.genes, n_latent=args.latent, seed=args.seed)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    model = fcrkit.models.SCVI(adata, n_latent=args.latent, seed=args.seed)
    start = time.perf_counter()
    history = model.train(max_epochs=args.epochs, batch_size=args.batch_size, accelerator=args.accelerator,
                          seed=args.seed, progress_bar=None)
    seconds = time.perf_counter() - start
    latent = model.get_latent_representation()["X_scvi"]
    adata.obsm["X_scvi"] = latent
    pca = pca_embedding(get_matrix(adata, None), args.latent, seed=args.seed)
    labels = adata.obs["cell_type"].to_numpy()
    rows = [
        ("scVI latent", knn_accuracy(latent, labels), linear_r2(adata.obsm["z_true"], latent)),
        ("PCA of log-normalised counts", knn_accuracy(pca, labels), linear_r2(adata.obsm["z_true"], pca)),
    ]
    print(f"\ntrained {len(history)} epochs in {seconds:.1f} s ({history.cells_per_second:,.0f} cells/s); "
          f"final loss {history['loss'][-1]:.2f}, validation -ELBO/cell {history['validation_loss'][-1]:.2f}")
    print()
    print(format_table(("representation", "15-NN accuracy (cell type)", "linear R² of true latent"),
                       [(name, f"{acc:.3f}", f"{r2:.3f}") for name, acc, r2 in rows]))
    if args.output:
        out = Path(args.output)
        model.save(out / "model", overwrite=True)
        adata.write_h5ad(out / "demo.h5ad")
        print(f"\nwrote {out / 'model'} and {out / 'demo.h5ad'}")
    return 0 if np.isfinite(history["loss"][-1]) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcrkit", description="Composable generative models of perturbation data.")
    sub = parser.add_subparsers(dest="command", required=True)

    comp = sub.add_parser("components", help="list registered components and the plugins that provide them")
    comp.add_argument("--kind", choices=KINDS, help="only this kind")
    comp.set_defaults(run=cmd_components)

    demo = sub.add_parser("demo", help="train on the built-in simulator and print a short report")
    demo.add_argument("--cells", type=int, default=3000)
    demo.add_argument("--genes", type=int, default=300)
    demo.add_argument("--latent", type=int, default=6)
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument("--batch-size", type=int, default=256)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--accelerator", default="auto", help="auto, cpu or cuda")
    demo.add_argument("--output", help="directory to write the model and an h5ad with the latent")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FcrkitError as err:
        print(f"fcrkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
