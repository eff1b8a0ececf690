"""Minibatch sizes at every boundary, and ``train(seed=...)`` reproducing a run exactly, for every recipe.

A last minibatch of one cell used to reach batch normalisation in training mode, which cannot
normalise a single cell (``Expected more than 1 value per channel when training``); and the initial
weights of a model built without ``seed=`` came from the global random state, so two
``train(seed=0)`` runs differed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from anndata import AnnData

from fcrkit.data.loaders import CellData

try:
    from fcrkit.data.loaders import batch_sizes
except ImportError:
    batch_sizes = None
from fcrkit.errors import ConfigError
from fcrkit.models import CPA, FCR, HCV, IVAE, SCVI, SVAE, VCI, BetaVAE, FactorVAE, Model, ScGen
from fcrkit.testing import tiny_adata

SMALL = {"n_hidden": 8, "n_layers": 1}
RECIPES: dict[str, Callable[..., Model]] = {
    "SCVI": lambda a, **kw: SCVI(a, n_latent=2, **SMALL, **kw),
    "BetaVAE": lambda a, **kw: BetaVAE(a, n_latent=2, **SMALL, **kw),
    "FactorVAE": lambda a, **kw: FactorVAE(a, n_latent=2, discriminator_hidden=8, discriminator_layers=1,
                                           discriminator_steps=1, **SMALL, **kw),
    "IVAE": lambda a, **kw: IVAE(a, n_latent=2, prior_hidden=8, **SMALL, **kw),
    "SVAE": lambda a, **kw: SVAE(a, n_latent=2, **SMALL, **kw),
    "HCV": lambda a, **kw: HCV(a, n_latent=2, **SMALL, **kw),
    "CPA": lambda a, **kw: CPA(a, n_latent=2, adversary_hidden=8, adversary_layers=1, adversary_steps=1, **SMALL,
                               **kw),
    "VCI": lambda a, **kw: VCI(a, n_latent=2, **SMALL, **kw),
    "ScGen": lambda a, **kw: ScGen(a, n_latent=2, n_hidden=8, n_layers=1, **kw),
    "FCR": lambda a, **kw: FCR(a, n_latent=2, prior_hidden=8, **SMALL, **kw),
}
BATCH = 16


def covering_subset(n: int) -> AnnData:
    """``n`` cells of one tiny data set, taken so that every cell type has a control among the first ones.

    The set-up (label vocabularies) is that of the whole data set, so every recipe builds at any ``n``.
    """
    adata = tiny_adata(120, 20, seed=0)
    control = (adata.obs["treatment"] == "control").to_numpy()
    cell_type = adata.obs["cell_type"].to_numpy()
    first = [int(np.flatnonzero(control & (cell_type == c))[0]) for c in sorted(set(cell_type))]
    # one control of each cell type, then alternately a treated cell and any other cell
    treated = [i for i in np.flatnonzero(~control) if i not in first]
    others = [i for i in range(adata.n_obs) if i not in first and i not in treated[:1]]
    order = first + treated[:1] + others
    return adata[order[:n]].copy()


def test_batch_sizes_merge_a_one_cell_remainder() -> None:
    assert batch_sizes(32, 16) == [16, 16]
    assert batch_sizes(33, 16) == [16, 17]  # merged: never a batch of one cell
    assert batch_sizes(34, 16) == [16, 16, 2]
    assert batch_sizes(1, 16) == [1]  # a lone cell stays alone (the trainer refuses it for batch norm)
    assert batch_sizes(33, 16, drop_last=True) == [16, 16]
    assert batch_sizes(7, 4, min_cells=4) == [7]  # e.g. two cells for each of two processes
    data = CellData(np.ones((33, 3), dtype=np.float32), {"x": np.zeros((33, 1))})
    seen = [b.index for b in data.iter_batches(torch.arange(33), 16, shuffle=True,
                                                generator=torch.Generator().manual_seed(0))]
    assert [len(i) for i in seen] == [16, 17]
    assert sorted(torch.cat(seen).tolist()) == list(range(33))  # every cell once


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_trains_at_every_batch_boundary(name: str) -> None:
    """n_train = k * batch + {0, 1, 2} for k = 1, 2, and tiny data sets of 2 and 3 cells: one epoch each."""
    for n in (2, 3, BATCH, BATCH + 1, BATCH + 2, 2 * BATCH + 1):
        model = RECIPES[name](covering_subset(n), seed=0)
        history = model.train(1, batch_size=BATCH, validation_fraction=0.0, seed=0, accelerator="cpu",
                              progress_bar=False)
        assert len(history) == 1 and np.isfinite(history["loss"][0]), (name, n)
        latent = next(iter(model.get_latent_representation(batch_size=BATCH, as_dict=True).values()))
        assert latent.shape[0] == n and np.isfinite(latent).all(), (name, n)


def test_one_training_cell_is_refused_with_the_fix() -> None:
    model = SCVI(covering_subset(10), n_latent=2, **SMALL, seed=0)
    with pytest.raises(ConfigError, match=r"only 1 training cells.*batch normalisation.*validation_fraction"):
        model.train(1, validation_fraction=0.9, seed=0, accelerator="cpu", progress_bar=False)
    with pytest.raises(ConfigError, match=r"batch_size=1.*at least 2 cells"):
        model.train(1, batch_size=1, seed=0, accelerator="cpu", progress_bar=False)
    with pytest.raises(ConfigError, match=r"drop_last=True with 10 training cells and batch_size=16"):
        model.train(1, batch_size=16, drop_last=True, validation_fraction=0.0, seed=0, accelerator="cpu",
                    progress_bar=False)


def latents_after(build: Callable[[], Model], global_seed: int, **train: object) -> np.ndarray:
    """Latents after 2 epochs of ``build()`` with the global random state set to ``global_seed`` first."""
    torch.manual_seed(global_seed)  # what earlier code (another test, a notebook cell) left behind
    np.random.seed(global_seed)
    model = build()
    model.train(2, batch_size=32, seed=0, accelerator="cpu", progress_bar=False, **train)
    return np.concatenate(list(model.get_latent_representation(as_dict=True).values()), axis=1)


@pytest.mark.parametrize("name", RECIPES)
def test_train_seed_reproduces_the_run_whatever_the_global_state(name: str) -> None:
    adata = tiny_adata(100, 20, seed=0)
    first = latents_after(lambda: RECIPES[name](adata), 1)
    second = latents_after(lambda: RECIPES[name](adata), 2)
    np.testing.assert_array_equal(first, second)
    # the same run as a model built with seed=0: the weights are drawn from the seed alike
    np.testing.assert_array_equal(first, latents_after(lambda: RECIPES[name](adata, seed=0), 3))


def test_a_constructor_seed_or_a_trained_model_keeps_its_weights() -> None:
    adata = tiny_adata(100, 20, seed=0)
    own = [latents_after(lambda s=s: SCVI(adata, n_latent=2, **SMALL, seed=s), 0) for s in (3, 3, 4)]
    np.testing.assert_array_equal(own[0], own[1])
    assert not np.array_equal(own[0], own[2])  # the constructor's seed=4 was not replaced by train's seed=0
    model = SCVI(adata, n_latent=2, **SMALL)
    model.train(1, seed=0, accelerator="cpu", progress_bar=False)
    trained = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(1, seed=0, accelerator="cpu", progress_bar=False)  # continues from the trained weights
    # redrawn from seed 0, one epoch would have led back to exactly the weights of the first run
    assert any(not torch.equal(trained[k], v) for k, v in model.module.state_dict().items())


@pytest.mark.parametrize("counts", [(35, 34), (33, 32), (32, 31), (40, 20)])
def test_ddp_ranks_take_the_same_steps_and_never_a_single_cell(counts: tuple[int, int]) -> None:
    """Two processes at batch 16: every rank takes as many steps, visits each of its cells once, none alone."""
    from fcrkit.train.strategy import rank_batch_sizes

    sizes = rank_batch_sizes(list(counts), 16)
    assert len(sizes[0]) == len(sizes[1])  # every rank takes the same number of steps
    assert [sum(s) for s in sizes] == list(counts)  # every cell once an epoch
    assert min(min(s) for s in sizes) >= 2  # batch normalisation never sees a single cell
    assert sizes[0] == batch_sizes(counts[0], 16)  # a rank that needs the most steps batches as one process does
    if counts == (33, 32):
        assert sizes == [[16, 17], [16, 16]]  # rank 0's one remaining cell joined its last full batch
    if counts == (40, 20):
        assert sizes == [[16, 16, 8], [7, 7, 6]]  # the rank with fewer cells cuts them into as many steps
    assert rank_batch_sizes(list(counts), 16, drop_last=True) == [[16] * (min(counts) // 16)] * 2
