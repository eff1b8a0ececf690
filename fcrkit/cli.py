"""The ``fcrkit`` command line: ``components``, ``demo``, ``fit``, ``predict``, ``evaluate``.

The commands are thin: the work is in :mod:`fcrkit.workflow` (and :mod:`fcrkit.demo`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from fcrkit.errors import ConfigError, FcrkitError
from fcrkit.protocols import KINDS


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_components(args: argparse.Namespace) -> int:
    """``fcrkit components``: list the registered components and recipes, and the plugin of each."""
    from fcrkit.registry import get_registry

    registry = get_registry()
    records = [] if args.kind == "recipe" else registry.records(args.kind)
    if args.kind in (None, "recipe"):  # whole models, registered through fcrkit_register_recipes
        records = [*records, *registry.recipe_records()]
    rows = [(r.kind, r.name, r.plugin, r.origin, r.summary) for r in records]
    print(format_table(("kind", "name", "plugin", "from", "summary"), rows))
    if registry.failures:
        print("\nPlugins that failed to load:")
        rows = [(f.plugin, f.origin, " ".join(f.error.split())) for f in registry.failures]  # one line each
        print(format_table(("plugin", "from", "error"), rows))
    return 0


#: ``fcrkit demo``'s sizes: option -> (default, with ``--quick``, what it sets).
DEMO_SIZES = {"cells": (3000, 600, "cells simulated"), "genes": (200, 100, "genes simulated"),
              "epochs": (60, 15, "training epochs of each model")}


def cmd_demo(args: argparse.Namespace) -> int:
    """``fcrkit demo``: FCR and two baselines on the interaction simulator (see :mod:`fcrkit.demo`)."""
    import fcrkit
    from fcrkit.demo import run_demo

    for flag, (full, quick, _) in DEMO_SIZES.items():  # a size given explicitly wins over --quick
        if getattr(args, flag) is None:
            setattr(args, flag, quick if args.quick else full)

    print(f"fcrkit {fcrkit.__version__} demo: FCR, β-VAE and scVI on the interaction simulator "
          f"({args.cells} cells x {args.genes} genes, {args.epochs} epochs, seed {args.seed})")
    start = time.perf_counter()
    result = run_demo(args.cells, args.genes, args.epochs, seed=args.seed, output=args.output,
                      accelerator=args.accelerator)
    print("\nRecovery of the true blocks (MCC, one square Hungarian match of all true dimensions):")
    print(result.table.to_string(float_format=lambda v: f"{v:.3f}"))
    print("\nFCR block identifiability (held-out kernel-ridge R² of each true block from each learned block):")
    print(result.block_r2.to_string(float_format=lambda v: f"{v:.2f}"))
    print("\nFCR blocks clustered (k-means) against the labels (NMI / ARI):")
    print(result.clustering.to_string(float_format=lambda v: f"{v:.3f}"))
    if result.files:
        print("\nwrote " + ", ".join(str(f) for f in result.files))
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """``fcrkit fit CONFIG.toml``: train the model a run configuration describes."""
    from fcrkit.workflow import RunConfig, fit

    config = RunConfig.from_toml(args.config, output_dir=args.output)  # validated before any data is read
    what = f"recipe {config.recipe}" if config.recipe else f"spec {config.spec.name!r}"
    held = "; held out: " + "; ".join(str(h) for h in config.hold_out) if config.hold_out else ""
    print(f"fcrkit fit: {what} on {config.data_path}{held}")
    result = fit(config, overwrite=True if args.overwrite else None)
    history = result.model.history
    final = ", ".join(f"{k} {v[-1]:.4g}" for k, v in history.values.items() if k in ("loss", "validation_loss") and v)
    print(f"trained {len(history)} epochs on {result.n_train} cells x {result.adata.n_vars} genes "
          f"({result.n_held_out} held out) in {result.seconds:.0f} s; final {final}")
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    print(f"next: fcrkit evaluate {result.output_dir} {config.data_path}")
    return 0


def _where(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--where {pair!r} is not KEY=VALUE (e.g. --where cell_type=B).")
        out[key.strip()] = value.strip()
    return out


def _dose(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # "1.0+0.5": one dose per part of a combination


def cmd_predict(args: argparse.Namespace) -> int:
    """``fcrkit predict``: a saved model's predicted expression of cells under a target treatment."""
    from fcrkit.workflow import predict

    result = predict(args.model_dir, args.data, args.treatment, _dose(args.dose), args.output,
                     where=_where(args.where), seed=args.seed)
    print(f"predicted {result.n_obs} cells x {result.n_vars} genes under {args.treatment!r} "
          f"(dose {args.dose}); wrote {args.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``fcrkit evaluate``: the metrics of a fitted run on its data."""
    from fcrkit.workflow import evaluate, format_metrics, resolve_run

    output = args.output
    if output is None:
        model_dir, _ = resolve_run(args.model_dir)
        output = model_dir.parent / "metrics.csv"
    frame = evaluate(args.model_dir, args.data, output, seed=args.seed)
    print(format_metrics(frame))
    print(f"\nwrote {output}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """``fcrkit benchmark``: recipes and baselines side by side on one data set (see :mod:`fcrkit.benchmark`)."""
    from fcrkit.benchmark import DEFAULT_HOLD_OUT, BenchmarkConfig, run_benchmark, simulated_data
    from fcrkit.tasks import Split

    baselines = None
    if args.config is not None:
        config = BenchmarkConfig.from_toml(args.config, output_dir=args.output)
        adata = config.load_data()
        setup = config.setup  # after load_data: a simulator adds its treatment features to it
        splits = config.splits(adata)
        chosen, train, seeds, baselines = config.recipes, config.train, config.seeds or (config.seed,), config.baselines
        output = config.output_dir
    else:
        adata, setup = simulated_data(args.simulator, n_cells=args.cells, n_genes=args.genes, seed=args.seed)
        held = DEFAULT_HOLD_OUT[args.simulator]
        splits = [Split("; ".join(str(h) for h in held), held)]
        chosen, seeds, output = None, (args.seed,), args.output
        train = {"max_epochs": args.epochs, "accelerator": args.accelerator}
    if args.recipes is not None:
        wanted = [r.strip() for r in args.recipes.split(",") if r.strip() and r.strip() != "none"]
        chosen = {name: (chosen or {}).get(name, {}) for name in wanted}
    if args.baselines is not None:
        wanted = [b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none"]
        baselines = {name: (baselines or {}).get(name, {}) for name in wanted}
    if args.seeds is not None:
        seeds = tuple(int(v) for v in args.seeds.split(","))
    print(f"fcrkit benchmark: {adata.n_obs} cells x {adata.n_vars} genes; {len(splits)} split(s), seeds "
          f"{', '.join(map(str, seeds))}; held out: " + " | ".join(s.name for s in splits))
    result = run_benchmark(adata, setup, chosen, splits=splits, baselines=baselines, train=train, seeds=seeds,
                           output=output)
    print()
    print(result.summary().to_string())
    if result.files:
        print("\nwrote " + ", ".join(str(f) for f in result.files.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fcrkit`` argument parser, with one sub-command per ``cmd_*`` function."""
    parser = argparse.ArgumentParser(prog="fcrkit", description="Composable generative models of perturbation data.")
    sub = parser.add_subparsers(dest="command", required=True)

    comp = sub.add_parser("components", help="list registered components and the plugins that provide them")
    comp.add_argument("--kind", choices=(*KINDS, "recipe"), help="only this kind (recipe: the registered models)")
    comp.set_defaults(run=cmd_components)

    demo = sub.add_parser(
        "demo", help="FCR and two baselines on the built-in simulator: a table and plots",
        description="Simulate cells with known latent blocks, train FCR, a β-VAE and scVI on them, and print how "
                    "well each recovers the blocks (about 2 minutes on 2 idle CPU cores). --quick simulates a fifth of "
                    "the cells and trains a quarter of the epochs, to check quickly that everything works.")
    for flag, (full, quick, what) in DEMO_SIZES.items():
        demo.add_argument(f"--{flag}", type=int, default=None, metavar="N",
                          help=f"{what} (default: {full}; with --quick: {quick})")
    demo.add_argument("--quick", action="store_true",
                      help="a small run (" + ", ".join(f"{q} {f}" for f, (_, q, _) in DEMO_SIZES.items()) + ")")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation, the models and the scores "
                                                          "(default: 0)")
    demo.add_argument("--accelerator", default="auto", help="auto, cpu or cuda (default: auto)")
    demo.add_argument("--output", default="fcrkit-demo",
                      help="directory for the plots and the table (default: fcrkit-demo)")
    demo.set_defaults(run=cmd_demo)

    fit = sub.add_parser(
        "fit", help="train the model a TOML run config describes; writes the model and the latents",
        description="Train the model a run config describes. The whole config is checked before any data is "
                    "read. Writes OUTPUT/model (the model), latents.h5ad (every block's latent in obsm), "
                    "history.csv, config.toml and run.json. Config sections: [data] (path, setup_anndata's "
                    "arguments, n_top_genes, hold_out), [model] (recipe and its arguments, or spec), "
                    "[train] (Model.train's arguments), [output] (dir, overwrite); see fcrkit.runconfig.")
    fit.add_argument("config", help="the run config (.toml); relative paths in it are relative to its folder")
    fit.add_argument("--output", help="output directory (overrides [output] dir)")
    fit.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    fit.set_defaults(run=cmd_fit)

    pred = sub.add_parser(
        "predict", help="counterfactual expression of control cells under a treatment",
        description="Load a trained model and predict the expression of cells under TREATMENT: by default the "
                    "control cells, narrowed by --where (a --where on the treatment column replaces the control "
                    "default). The output .h5ad has the same cells and genes, X on the data's scale (expected "
                    "counts for count models).")
    pred.add_argument("model_dir", help="the output directory of fcrkit fit (or its model/ folder)")
    pred.add_argument("data", help=".h5ad with the model's genes (a superset is narrowed to them) and labels")
    pred.add_argument("--treatment", required=True, help="the treatment to predict; combinations as A+B")
    pred.add_argument("--dose", default="1.0", help="dose (a number, or one per part as 1.0+0.5); default 1")
    pred.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                      help="only cells with obs[KEY] == VALUE (repeatable; all must hold)")
    pred.add_argument("--output", required=True, help="the .h5ad file of predictions to write")
    pred.add_argument("--seed", type=int, default=0, help="seed of the prior draws")
    pred.set_defaults(run=cmd_predict)

    ev = sub.add_parser(
        "evaluate", help="score a trained model: block clustering, true-latent recovery, prediction",
        description="Score a trained model on DATA: per latent block, k-means NMI/ARI against the covariates and "
                    "the treatment; MCC and block R² where the data hold true latents (obsm z_true, z_<block>); "
                    "for models that predict, R² of the predicted mean expression of each treated condition "
                    "(held-out ones marked) against the no-change baseline. Prints tables, writes a tidy CSV "
                    "(metric, block, target, value, split).")
    ev.add_argument("model_dir", help="the output directory of fcrkit fit (or its model/ folder)")
    ev.add_argument("data", help=".h5ad with the model's genes and labels (held-out cells included)")
    ev.add_argument("--output", help="metrics CSV to write (default: metrics.csv in the run directory)")
    ev.add_argument("--seed", type=int, default=0, help="seed of k-means and of the prediction draws")
    ev.set_defaults(run=cmd_evaluate)

    bench = sub.add_parser(
        "benchmark", help="recipes and baselines side by side on one data set and task: one table",
        description="Train several recipes and the baselines (NoChange, PerturbedMean, Additive, LinearRidge) on "
                    "the same splits with the same settings, once per seed, and score them alike: MCC of the true "
                    "latents (simulated data), k-means NMI against each label, prediction of the held-out "
                    "conditions (PearsonΔ, PearsonΔ20, Systema's PearsonΔ against the perturbed mean, cosine "
                    "logFC, RMSE, normalised rank, DEG direction and overlap, energy distance, MMD, R²), training "
                    "time. Prints mean ± sd over splits and seeds, writes benchmark.csv (means), "
                    "benchmark_sd.csv, benchmark_runs.csv, benchmark_conditions.csv and benchmark.png. Without "
                    "CONFIG: all recipes on a simulator (see fcrkit.benchmark for the config format, which also "
                    "takes an .h5ad and a [task]).")
    bench.add_argument("config", nargs="?", help="benchmark config (.toml); without it, a simulator is used")
    bench.add_argument("--simulator", default="interaction", choices=("interaction", "basic"))
    bench.add_argument("--cells", type=int, default=3000)
    bench.add_argument("--genes", type=int, default=200)
    bench.add_argument("--epochs", type=int, default=40)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--accelerator", default="auto", help="auto, cpu or cuda")
    bench.add_argument("--recipes", help="comma-separated recipe names (default: every recipe; 'none' for none)")
    bench.add_argument("--baselines", help="comma-separated baseline names (default: NoChange, PerturbedMean, "
                       "Additive, LinearRidge; 'none' for none)")
    bench.add_argument("--seeds", help="comma-separated seeds, each a full run (default: --seed, or the config's)")
    bench.add_argument("--output", default=None, help="folder for the table and the plot (config: [output] dir)")
    bench.set_defaults(run=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fcrkit`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FcrkitError as err:
        print(f"fcrkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
