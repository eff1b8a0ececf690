"""Memory: peak RSS of training SCVI in memory, and out of core from an h5ad opened with backed="r".

Every measurement runs in a fresh subprocess (peak RSS is per process):

1. in memory: build ``simulated_counts(200_000, 2000)`` (sparse, chunk by chunk) and train SCVI for one
   epoch (batch 1024). Peak RSS is reported for the whole process, and split into the build of the
   data and the training (model construction included) where Linux lets the peak be reset
   (``/proc/self/clear_refs``).
2. backed: write h5ad files of two sizes (default 100k and 400k cells x 2000 genes, CSR) piece by piece
   with h5py in anndata's CSR layout, so the writer never holds the matrix; then open each with
   ``backed="r"``, register it (``setup_anndata`` checks the values in a streaming pass) and train SCVI
   for one epoch. Bounded memory means about the same peak RSS at both sizes.

The h5ad files go to a temporary directory (``--dir``) and are deleted afterwards unless ``--keep``.
Each 25k-cell piece of a backed file is drawn with its own seed (its own gene programme): fine for
memory and speed, not meant for judging model quality.

    python benchmarks/memory.py [--cells 200000] [--backed-cells 100000 400000] [--genes 2000]
                                [--batch-size 1024] [--out memory.csv] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_gb, report, simulated_counts  # noqa: E402

PIECE = 25_000  # cells generated and appended to a backed file at a time
LIMIT_GB = 4.0  # the in-memory 200k x 2000 run must stay under this


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=200_000, help="cells of the in-memory run (0: skip it)")
    parser.add_argument("--backed-cells", type=int, nargs="*", default=[100_000, 400_000],
                        help="cells of each backed run")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("memory.csv"))
    parser.add_argument("--dir", type=Path, default=None, help="where the h5ad files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the h5ad files")
    parser.add_argument("--child", choices=("memory", "write", "backed"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)

    rows = []
    if args.cells:
        print(f"in memory: {args.cells} x {args.genes} ...", flush=True)
        rows.append(_run("memory", args, cells=args.cells))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.backed_cells:
            path = Path(tmp) / f"cells_{n}.h5ad"
            print(f"writing {path} ...", flush=True)
            written = _run("write", args, cells=n, path=path)
            print(f"backed: {n} x {args.genes} ...", flush=True)
            rows.append({**_run("backed", args, cells=n, path=path), "write_peak_rss_gb": written["peak_rss_gb"],
                         "write_s": written["seconds"], "file_gb": path.stat().st_size / 1e9})
            if args.keep:
                kept = (args.dir or Path.cwd()) / path.name
                os.replace(path, kept)
                print(f"kept {kept}")
    report(rows, args.out, f"Peak RSS training SCVI for 1 epoch (batch {args.batch_size}), {args.genes} genes")
    memory = [r for r in rows if r["mode"] == "in memory"]
    if memory and memory[0]["peak_rss_gb"] >= LIMIT_GB:
        print(f"\nWARNING: the in-memory run peaked at {memory[0]['peak_rss_gb']:.2f} GB, over {LIMIT_GB} GB.")


def _run(child: str, args: argparse.Namespace, *, cells: int, path: Path | None = None) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is a JSON row."""
    command = [sys.executable, __file__, "--child", child, "--cells", str(cells), "--genes", str(args.genes),
               "--batch-size", str(args.batch_size)]
    if path is not None:
        command += ["--path", str(path)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{child} run failed:\n{done.stdout}\n{done.stderr}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {row} ({time.perf_counter() - start:.0f} s)", flush=True)
    return row


# -- the children ---------------------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if args.child == "write":
        start = time.perf_counter()
        _write_backed(args.path, args.cells, args.genes)
        row = {"seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": round(peak_rss_gb(), 3)}
    elif args.child == "memory":
        start = time.perf_counter()
        adata = simulated_counts(args.cells, args.genes)
        build_s, build_peak = time.perf_counter() - start, _peak_gb()
        reset = _reset_peak()
        row = {"mode": "in memory", "cells": args.cells, "nnz": int(adata.X.nnz), "build_s": round(build_s, 1),
               **_train(adata, args.batch_size), "build_peak_rss_gb": round(build_peak, 3)}
        row["train_peak_rss_gb"] = round(_peak_gb(), 3) if reset else float("nan")
        row["peak_rss_gb"] = round(max(build_peak, _peak_gb(), peak_rss_gb()), 3)
    else:
        import anndata as ad

        import fcrkit

        adata = ad.read_h5ad(args.path, backed="r")
        start = time.perf_counter()
        fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
        row = {"mode": "backed", "cells": args.cells, "nnz": int(adata.file["X"]["indptr"][-1]),
               "setup_s": round(time.perf_counter() - start, 1), **_train(adata, args.batch_size)}
        row["peak_rss_gb"] = round(peak_rss_gb(), 3)
    print(json.dumps(row))


def _train(adata, batch_size: int) -> dict:
    """Build SCVI (its value checks included) and train one epoch; timings and throughput."""
    import fcrkit

    start = time.perf_counter()
    model = fcrkit.models.SCVI(adata, seed=0)
    built = time.perf_counter()
    history = model.train(max_epochs=1, batch_size=batch_size, seed=0, accelerator="cpu", progress_bar=False)
    return {"model_s": round(built - start, 1), "train_s": round(time.perf_counter() - built, 1),
            "cells_per_s": round(history.cells_per_second)}


def _write_backed(path: Path, n_cells: int, n_genes: int) -> None:
    """An h5ad of ``n_cells`` simulated cells, written ``PIECE`` cells at a time (never the whole matrix)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    obs, uns = [], None
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = x.create_dataset("data", (0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        indices = x.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
        for number, start in enumerate(range(0, n_cells, PIECE)):
            piece = simulated_counts(min(PIECE, n_cells - start), n_genes, seed=number)
            matrix, nnz = piece.X, int(indptr[start])
            data.resize((nnz + matrix.nnz,))
            indices.resize((nnz + matrix.nnz,))
            data[nnz:], indices[nnz:] = matrix.data, matrix.indices
            indptr[start + 1 : start + piece.n_obs + 1] = nnz + matrix.indptr[1:]
            obs.append(piece.obs)
            uns = uns or dict(piece.uns)
            var = piece.var
            del piece, matrix
        x.create_dataset("indptr", data=indptr)
        obs = pd.concat(obs)
        obs.index = [f"cell_{i}" for i in range(n_cells)]
        for key, value in (("obs", obs), ("var", var), ("uns", uns), ("obsm", {}), ("varm", {}), ("layers", {}),
                           ("obsp", {}), ("varp", {})):
            write_elem(f, key, value)
    ad.read_h5ad(path, backed="r").file.close()  # readable by anndata


def _peak_gb() -> float:
    """Peak RSS of this process since the last reset (Linux VmHWM), else since the start."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM"))
        return int(line.split()[1]) / 1e6
    except (OSError, StopIteration):
        return peak_rss_gb()


def _reset_peak() -> bool:
    """Reset the peak RSS counter (Linux >= 4.0), so a later phase is measured on its own."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
