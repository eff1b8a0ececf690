"""Memory per rank of data-parallel training from a backed .h5ad: each rank streams only its shard.

For each size (default 100k and 400k cells x 500 genes, CSR) an h5ad is written piece by piece
(``benchmarks/memory.py``'s writer, which never holds the matrix), then SCVI is trained for one
epoch from it opened with ``backed="r"``: under ``torchrun --nproc_per_node 2`` (gloo, one torch
thread per rank; each rank opens the file and reads only its contiguous half of the rows), and, for
comparison, in one process. Reported per process: peak RSS (VmHWM), the rows it read, and the
epoch's wall time. Bounded memory means about the same peak per rank at both sizes.

    python benchmarks/ddp_memory.py [--cells 100000 400000] [--genes 500] [--batch-size 1024]
                                    [--processes 2] [--no-single] [--dir DIR] [--out ddp_memory.csv]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from memory import _peak_gb, _write_backed  # noqa: E402


def main() -> None:
    """Write the files, run the ranks and the single process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--genes", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=1024, help="per process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no-single", action="store_true", help="skip the one-process comparison")
    parser.add_argument("--dir", type=Path, default=None, help="where the h5ad files go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("ddp_memory.csv"))
    parser.add_argument("--child", choices=("write", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":
        _write_backed(args.path, args.cells[0], args.genes)
        return None
    if args.child == "train":
        return _train(args)

    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCRKIT_DISABLE_PLUGINS": "1"}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.cells:
            path = Path(tmp) / f"cells_{n}.h5ad"
            print(f"writing {path} ...", flush=True)
            _call([sys.executable, __file__, "--child", "write", "--cells", str(n), "--genes", str(args.genes),
                   "--path", str(path)], env)
            runs = [("ddp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes)])]
            if not args.no_single:
                runs.append(("single", []))
            for mode, launcher in runs:
                result = Path(tmp) / f"result_{mode}_{n}"
                print(f"{mode}: {n} cells ...", flush=True)
                _call([sys.executable, *launcher, __file__, "--child", "train", "--path", str(path), "--batch-size",
                       str(args.batch_size), "--result", str(result)], env)
                for part in sorted(Path(tmp).glob(f"{result.name}_rank*.json")):
                    rows.append({"cells": n, "file_gb": round(path.stat().st_size / 1e9, 2),
                                 **json.loads(part.read_text())})
            path.unlink()
    report(rows, args.out, f"Peak RSS per process, SCVI 1 epoch from a backed h5ad ({args.genes} genes, batch "
                           f"{args.batch_size} per process)")


def _call(command: list[str], env: dict[str, str]) -> None:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def _train(args: argparse.Namespace) -> None:
    """One process (a rank under torchrun, or alone): open the file, set it up, train one epoch."""
    import anndata as ad
    import torch

    torch.set_num_threads(1)
    import fcrkit

    start_rss = _peak_gb()
    adata = ad.read_h5ad(args.path, backed="r")
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    model = fcrkit.models.SCVI(adata, seed=0)
    start = time.perf_counter()
    history = model.train(max_epochs=1, batch_size=args.batch_size, seed=0, accelerator="cpu", progress_bar=False,
                          validation_fraction=0.02)
    seconds = time.perf_counter() - start
    ddp = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if ddp else (0, 1)
    rows = adata.n_obs * (rank + 1) // world - adata.n_obs * rank // world
    row = {"mode": f"ddp rank {rank} of {world}" if ddp else "one process", "rows_read": rows,
           "rss_after_import_gb": round(start_rss, 3), "peak_rss_gb": round(_peak_gb(), 3),
           "epoch_s": round(seconds, 1), "cells_per_s": round(history.cells_per_second)}
    Path(f"{args.result}_rank{rank}.json").write_text(json.dumps(row))


if __name__ == "__main__":
    main()
