"""Data-parallel training (``strategy="ddp"``) on CPU with the gloo backend.

What is checked:

* one process in a gloo group of one reproduces single-process training bit for bit (sharding,
  loss scaling, random streams and DDP's hooks change nothing), with and without an adversary;
* two processes started by ``model.train(strategy="ddp", devices=2)`` (scVI) and by ``torchrun
  --nproc_per_node 2`` (FactorVAE, whose discriminator is an adversary) end with identical
  parameters on every rank, and match one process at the same effective batch (per-process batch
  64 x 2 against 128, same seed and epochs). Tolerances: the final -ELBO per cell (10 Monte Carlo
  passes over every cell) within ``ELBO_TOLERANCE`` (8%; measured 1.8-4.7% for scVI and 0.2-3.4%
  for FactorVAE over three seeds, about 2% worse on average, while one-process runs at different
  seeds spread by 3%; see ``fcrkit.train.distributed``), and the latent's linear R² with the true
  latent within ``R2_TOLERANCE`` (0.25; measured 0.02-0.17, one-process seeds spread by 0.17).
  The spread between seeds, not DDP, sets these bounds: any float difference (another CPU) moves a
  run like another seed would;
* a run of 2 torchrun processes killed with SIGKILL (launcher and workers) and resumed from its
  checkpoint ends bit for bit where the uninterrupted run ends; another number of processes is refused;
* a rank reads only its shard of a backed file; a global-batch term (HSIC) computed on two processes
  has exactly the one-process gradient of the whole batch;
* clear errors for bad strategies, device counts and unsupported settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pyro
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist

import fcrkit
from fcrkit.data.anndata import get_setup
from fcrkit.data.backed import cell_data
from fcrkit.data.disk import DiskMatrix
from fcrkit.data.loaders import CellData
from fcrkit.errors import ConfigError
from fcrkit.metrics import linear_r2
from fcrkit.train import checkpoint
from fcrkit.train.distributed import resolve_strategy
from fcrkit.train.trainer import Trainer, TrainingPlan

ROOT = str(Path(__file__).resolve().parents[1])
ELBO_TOLERANCE = 0.08  # relative difference of the final -ELBO per cell, DDP vs one process
R2_TOLERANCE = 0.25  # absolute difference of the linear R² with the true latent

EPOCHS, LR, PER_RANK_BATCH = 60, 1e-2, 64
SCVI_OPTIONS = {"n_latent": 4, "n_hidden": 32, "kl_warmup_epochs": 0}
FACTORVAE_OPTIONS = {"n_latent": 4, "n_hidden": 32, "n_layers": 1, "kl_warmup_epochs": 0, "gamma": 5.0,
                     "discriminator_hidden": 32, "discriminator_layers": 2, "discriminator_steps": 2}


def simulated():
    adata = fcrkit.simulate.basic(n_cells=1000, n_genes=50, n_latent=4, seed=1)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"])
    return adata


def flat_state(model) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in model.module.state_dict().values()])


def neg_elbo(model, passes: int = 10) -> float:
    """-ELBO per cell over every cell, averaged over ``passes`` Monte Carlo passes (a fixed seed)."""
    data = CellData.from_anndata(model.adata, model.setup)
    trainer = Trainer(model.module, data, TrainingPlan(batch_size=data.n_obs))
    model.module.eval()
    with torch.random.fork_rng():
        pyro.set_rng_seed(123)
        return sum(float(trainer.validation_loss(torch.arange(data.n_obs))) for _ in range(passes)) / passes


def r2(model, adata) -> float:
    return linear_r2(adata.obsm["z_true"], model.get_latent_representation())


def assert_agrees(name: str, ddp, single, adata) -> None:
    elbo_ddp, elbo_single = neg_elbo(ddp), neg_elbo(single)
    r2_ddp, r2_single = r2(ddp, adata), r2(single, adata)
    gap = abs(elbo_ddp - elbo_single) / elbo_single
    print(f"{name}: -ELBO/cell DDP {elbo_ddp:.2f} vs one process {elbo_single:.2f} ({100 * gap:.2f}%); "
          f"R2 {r2_ddp:.3f} vs {r2_single:.3f}")
    assert gap < ELBO_TOLERANCE, f"{name}: DDP -ELBO {elbo_ddp:.2f} is {100 * gap:.1f}% from {elbo_single:.2f}"
    assert abs(r2_ddp - r2_single) < R2_TOLERANCE, f"{name}: R2 {r2_ddp:.3f} vs {r2_single:.3f}"


@pytest.fixture
def gloo_group_of_one(tmp_path):
    """This process as the only rank of a gloo process group."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# -- one rank reproduces one process exactly --------------------------------------------------------------------
@pytest.mark.parametrize("recipe,options", [("SCVI", SCVI_OPTIONS), ("FactorVAE", FACTORVAE_OPTIONS)])
def test_a_group_of_one_reproduces_single_process_training(gloo_group_of_one, recipe, options):
    adata = simulated()
    runs = []
    for strategy in ("single", "ddp"):
        model = getattr(fcrkit.models, recipe)(adata, **options, seed=0)
        history = model.train(max_epochs=3, batch_size=128, lr=LR, seed=0, accelerator="cpu", strategy=strategy,
                              early_stopping=True, patience=5)
        runs.append((flat_state(model), history))
    (single, h_single), (ddp, h_ddp) = runs
    assert torch.equal(single, ddp)
    assert h_single["loss"] == pytest.approx(h_ddp["loss"], rel=1e-6)
    assert h_single["validation_loss"] == pytest.approx(h_ddp["validation_loss"], rel=1e-6)
    assert h_single.best_epoch == h_ddp.best_epoch


# -- two processes -----------------------------------------------------------------------------------------------
def test_two_spawned_processes_match_single_process_training_at_the_effective_batch():
    adata = simulated()
    single = fcrkit.models.SCVI(adata, **SCVI_OPTIONS, seed=0)
    single.train(max_epochs=EPOCHS, batch_size=2 * PER_RANK_BATCH, lr=LR, seed=0, accelerator="cpu")
    ddp = fcrkit.models.SCVI(adata, **SCVI_OPTIONS, seed=0)
    # the workers compare their replicas at the end (ReplicaMismatchError if any value differs)
    history = ddp.train(max_epochs=EPOCHS, batch_size=PER_RANK_BATCH, lr=LR, seed=0, accelerator="cpu",
                        strategy="ddp", devices=2)
    assert ddp.is_trained and len(history) == EPOCHS and len(history["validation_loss"]) == EPOCHS
    assert_agrees("scVI", ddp, single, adata)


TORCHRUN_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import fcrkit

adata = fcrkit.simulate.basic(n_cells=1000, n_genes=50, n_latent=4, seed=1)
fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"])
model = fcrkit.models.FactorVAE(adata, **{options!r}, seed=0)
history = model.train(max_epochs={epochs}, batch_size={batch}, lr={lr}, seed=0, accelerator="cpu")  # auto: ddp
state = {{k: v.detach() for k, v in model.module.state_dict().items()}}
torch.save({{"state": state, "values": history.values}}, f"{{sys.argv[1]}}/rank{{dist.get_rank()}}.pt")
"""


def test_two_processes_under_torchrun_hold_identical_parameters(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT.format(options=FACTORVAE_OPTIONS, epochs=EPOCHS,
                                                             batch=PER_RANK_BATCH, lr=LR)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCRKIT_DISABLE_PLUGINS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), f"ranks differ in {key}"
    assert ranks[0]["values"] == ranks[1]["values"]  # the same history (early stopping would agree)

    adata = simulated()
    ddp = fcrkit.models.FactorVAE(adata, **FACTORVAE_OPTIONS, seed=0)
    ddp.module.load_state_dict(ranks[0]["state"])
    single = fcrkit.models.FactorVAE(adata, **FACTORVAE_OPTIONS, seed=0)
    single.train(max_epochs=EPOCHS, batch_size=2 * PER_RANK_BATCH, lr=LR, seed=0, accelerator="cpu")
    assert_agrees("FactorVAE", ddp, single, adata)


# -- sharded data --------------------------------------------------------------------------------------------------
def test_a_rank_reads_only_its_shard_of_a_backed_file(small_adata, tmp_path, monkeypatch):
    adata = small_adata.copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    read: list[np.ndarray] = []
    rows = DiskMatrix.rows

    def recording_rows(self, which):
        read.append(np.asarray(which))
        return rows(self, which)

    monkeypatch.setattr(DiskMatrix, "rows", recording_rows)
    shard = cell_data(backed, get_setup(backed), rows=(200, 400), chunk_cells=64)
    memory = CellData.from_anndata(adata[200:400], get_setup(adata))
    assert shard.n_obs == 200
    torch.testing.assert_close(shard.library, memory.library)
    batches = list(shard.iter_batches(torch.arange(200), 48, shuffle=True, generator=torch.Generator().manual_seed(0),
                                      sizes=[50, 50, 50, 40]))
    assert [len(b.index) for b in batches] == [50, 50, 50, 40]  # the sizes given (10 cells left for this epoch)
    for batch in batches:  # the shard's rows, numbered within it
        expected = memory.batch(batch.index)
        assert torch.equal(batch.y, expected.y)
        assert all(torch.equal(batch.labels[k], expected.labels[k]) for k in expected.labels)
    assert read and all(r.min() >= 200 and r.max() < 400 for r in read)  # nothing outside the shard was read
    backed.file.close()


# -- global-batch terms --------------------------------------------------------------------------------------------
GATHER_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fcrkit.metrics import hsic_torch
from fcrkit.protocols import BlockMoments, Context
from fcrkit.train.strategy import DataParallel

SIZES = [7, 5]  # this step's cells on rank 0 and rank 1 (uneven, as a last batch can be)


def run(rank, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)  # the same global batch and weights on both ranks
    z, s, w = torch.randn(12, 3), torch.randn(12, 2), torch.randn(3)
    start = sum(SIZES[:rank])
    weight = w.clone().requires_grad_()
    local = z[start:start + SIZES[rank]] * weight  # this rank's latents, a function of the shared weight
    strategy = DataParallel(n_obs=12)
    strategy._step_sizes = SIZES
    ctx = Context(z={"a": local}, loc=BlockMoments({"a": local}, "loc"),
                  scale=BlockMoments({"a": local.exp()}, "scale"), labels={"x": s[start:start + SIZES[rank]]},
                  index=torch.arange(SIZES[rank]), n_obs=12)
    whole = strategy.global_context(ctx)
    hsic_torch(whole.z["a"], whole.labels["x"]).backward()
    strategy.reduce_gradients([weight])  # summed over ranks: each rank's gradient reached its own cells only
    if rank == 0:
        torch.save({"grad": weight.grad, "z": whole.z["a"].detach(), "index": whole.index, "z_true": z * w,
                    "hsic": hsic_torch(whole.z["a"], whole.labels["x"]).detach()}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_a_global_batch_term_on_two_processes_has_the_gradient_of_the_whole_batch(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    out = tmp_path / "out.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCRKIT_DISABLE_PLUGINS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script), f"file://{tmp_path / 'rendezvous'}", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    z, s, w = torch.randn(12, 3), torch.randn(12, 2), torch.randn(3)
    weight = w.clone().requires_grad_()
    from fcrkit.metrics import hsic_torch

    expected = hsic_torch(z * weight, s)
    expected.backward()
    assert torch.equal(got["z"], got["z_true"])  # every rank's cells, in rank order
    # numbered in the whole data set: rank 1's shard of the 12 cells starts at row 6
    assert got["index"].tolist() == list(range(7)) + list(range(6, 11))
    torch.testing.assert_close(got["hsic"], expected.detach())
    torch.testing.assert_close(got["grad"], weight.grad)  # the one-process gradient of the whole batch's HSIC


# -- checkpoints and exact resume ---------------------------------------------------------------------------------
RESUME_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
import torch.distributed as dist
import fcrkit
from fcrkit.train import checkpoint

cfg = json.loads(sys.argv[1])
adata = fcrkit.simulate.basic(n_cells=300, n_genes=30, seed=0)
fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
if cfg.get("sleep"):  # slow rank 0 down after each checkpoint (the other rank waits for it) so the test can kill it
    save = checkpoint.save
    checkpoint.save = lambda *args, **kwargs: (save(*args, **kwargs), time.sleep(cfg["sleep"]))[0]
# FCR: control pairing, adversaries and global-batch regularisers (the permutation discriminators)
model = fcrkit.models.FCR(adata, likelihood="nb", n_latent={"x": 3, "t": 3, "tx": 3}, n_hidden=16, seed=0)
history = model.train(cfg["epochs"], batch_size=32, seed=1, progress_bar=False, accelerator="cpu", strategy="ddp",
                      **cfg.get("train", {}))
state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
torch.save({"state": state, "values": history.values}, f"{cfg['out']}_rank{dist.get_rank()}.pt")
"""


def torchrun(tmp_path, name: str, **cfg) -> subprocess.Popen:
    """The resume script under torchrun with 2 gloo processes, in its own session (so the test can kill all of it)."""
    script = tmp_path / "resume.py"
    if not script.exists():
        script.write_text(RESUME_SCRIPT)
    cfg["out"] = str(tmp_path / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCRKIT_DISABLE_PLUGINS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), json.dumps(cfg)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_ddp_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    epochs, directory = 8, tmp_path / "checkpoints"
    plan = {"checkpoint_dir": str(directory), "checkpoint_every": 1}
    reference = torchrun(tmp_path, "reference", epochs=epochs)
    victim = torchrun(tmp_path, "victim", epochs=epochs, sleep=0.5, train=plan)
    try:
        deadline = time.monotonic() + 240
        while (checkpoint_epoch(directory) or 0) < 2:
            assert victim.poll() is None, victim.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the ddp run never reached epoch 2"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both workers at once
        victim.wait(timeout=60)
    killed_at = checkpoint_epoch(directory)
    assert 2 <= killed_at < epochs - 1, f"the run was killed after epoch {killed_at}: nothing left to resume"
    assert checkpoint.load(directory)["identity"]["processes"] == 2

    resumed = torchrun(tmp_path, "resumed", epochs=epochs, train={**plan, "resume": True})
    for run in (resumed, reference):
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output[-3000:]
    for rank in (0, 1):
        got = torch.load(tmp_path / f"resumed_rank{rank}.pt", weights_only=True)
        expected = torch.load(tmp_path / f"reference_rank{rank}.pt", weights_only=True)
        for key, value in expected["state"].items():
            assert torch.equal(got["state"][key], value), f"rank {rank}: {key} differs from the uninterrupted run"
        assert got["values"] == expected["values"]
        assert len(got["values"]["loss"]) == epochs


def checkpoint_epoch(directory) -> int | None:
    payload = checkpoint.load(directory)
    return None if payload is None else payload["state"]["epoch"]


def test_resuming_with_another_number_of_processes_is_refused(gloo_group_of_one, small_adata, tmp_path):
    settings = {"batch_size": 64, "seed": 0, "accelerator": "cpu", "strategy": "ddp", "checkpoint_dir": tmp_path}
    model = fcrkit.models.SCVI(small_adata, n_latent=2, seed=0)
    model.train(1, **settings)
    payload = checkpoint.load(tmp_path)
    assert payload["identity"]["processes"] == 1 and len(payload["state"]["rng"]["ranks"]) == 1
    payload["identity"]["processes"] = 2  # as two processes would have written it
    checkpoint.save(tmp_path, payload["identity"], payload["state"])
    with pytest.raises(ConfigError, match="processes=2 in the checkpoint, 1 here"):
        model.train(2, resume=True, **settings)


# -- errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy,devices,match", [
    ("dp", None, "strategy='dp' is not one of"),
    ("ddp", 0, "devices=0 must be a positive integer"),
    ("ddp", 1.5, "devices=1.5 must be a positive integer"),
    ("ddp", True, "devices=True must be a positive integer"),
    ("single", 2, "strategy='single' trains in this one process"),
])
def test_bad_strategy_or_devices_is_refused(small_adata, strategy, devices, match):
    model = fcrkit.models.SCVI(small_adata, n_latent=2, seed=0)
    with pytest.raises(ConfigError, match=match):
        model.train(max_epochs=1, strategy=strategy, devices=devices)


def test_ddp_without_devices_outside_torchrun_is_refused(small_adata, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = fcrkit.models.SCVI(small_adata, n_latent=2, seed=0)
    with pytest.raises(ConfigError, match="needs devices=N"):
        model.train(max_epochs=1, strategy="ddp", accelerator="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_ddp_on_cuda_without_cuda_is_refused(small_adata):
    model = fcrkit.models.SCVI(small_adata, n_latent=2, seed=0)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        model.train(max_epochs=1, strategy="ddp", devices=2, accelerator="cuda")


def test_auto_strategy(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert resolve_strategy("auto", None) == "single"
    assert resolve_strategy("auto", 1) == "single"
    assert resolve_strategy("auto", 2) == "ddp"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_strategy("auto", None) == "ddp"
    assert resolve_strategy("single", None) == "single"


def test_torchrun_world_size_must_match_devices(small_adata, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = fcrkit.models.SCVI(small_adata, n_latent=2, seed=0)
    with pytest.raises(ConfigError, match="devices=4, but this process is one of 2"):
        model.train(max_epochs=1, strategy="ddp", devices=4, accelerator="cpu")


def test_a_worker_error_is_raised_in_the_parent_as_itself(tmp_path):
    from fcrkit.errors import NonFiniteLossError
    from fcrkit.train.distributed import _raise_worker_error, _save_worker_error

    _save_worker_error(tmp_path, 1, ConfigError("bad setting"))
    with pytest.raises(ConfigError, match="bad setting"):
        _raise_worker_error(tmp_path, RuntimeError("process 1 terminated"))
    for path in tmp_path.glob("error-*"):
        path.unlink()
    _save_worker_error(tmp_path, 0, NonFiniteLossError("elbo", 3, float("nan")))  # does not survive pickling
    with pytest.raises(RuntimeError, match="failed in a worker process:(.|\n)*loss term 'elbo' became nan"):
        _raise_worker_error(tmp_path, RuntimeError("process 0 terminated"))
