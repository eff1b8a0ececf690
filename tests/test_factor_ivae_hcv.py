"""FactorVAE, iVAE and HCV: their new parts (``total_correlation``, ``hsic``) and what each model is for.

The three property tests train small models on simulated data; the numbers in their comments were
measured with ``OMP_NUM_THREADS=1`` on CPU (the seeds are fixed, so a run reproduces them).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

import fcrkit
from fcrkit.components.independence import HSICPenalty, TotalCorrelation, shuffle_dimensions
from fcrkit.errors import ConfigError
from fcrkit.metrics import hsic, mcc
from fcrkit.models import HCV, IVAE, BetaVAE, FactorVAE, Model
from fcrkit.protocols import Context, ModelInfo
from fcrkit.testing import check_component, tiny_adata


def gaussian_context(z: torch.Tensor, labels: dict | None = None) -> Context:
    """A context whose one block ``z`` is the given codes."""
    return Context({"z": z}, {"z": z}, {"z": torch.ones_like(z)}, labels or {}, torch.arange(len(z)), len(z))


def gaussian_tc(z: np.ndarray) -> float:
    """Total correlation of the Gaussian with the codes' covariance: ``½ (Σ_j log var_j − log det Σ)``."""
    cov = np.cov(z, rowvar=False)
    return 0.5 * float(np.log(np.diag(cov)).sum() - np.linalg.slogdet(cov)[1])


# -- the parts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"blocks": ["t", "tx"], "n_hidden": 16, "n_layers": 1, "adversary_steps": 3}])
def test_total_correlation_conforms(options):
    reg = check_component("regularizer", "total_correlation", options)
    assert reg.adversary_steps == options.get("adversary_steps", 1)


@pytest.mark.parametrize("options", [{}, {"blocks": ["t"], "label": "t", "use": "loc"}])
def test_hsic_conforms(options):
    check_component("regularizer", "hsic", options)


@pytest.mark.parametrize("factory, options, match", [
    (TotalCorrelation, {"blocks": ["zz"]}, "unknown block 'zz'"),
    (TotalCorrelation, {"blocks": ["t"], "n_hidden": 8}, "needs at least two"),  # t has 1 dimension here
    (TotalCorrelation, {"adversary_lr": 0}, "adversary_lr=0"),
    (TotalCorrelation, {"adversary_steps": 0}, "adversary_steps=0"),
    (HSICPenalty, {"label": "s"}, "label='s'"),
    (HSICPenalty, {"use": "mean"}, "use='mean'"),
    (HSICPenalty, {"blocks": ["zz"]}, "unknown block 'zz'"),
    (HSICPenalty, {"label": "t"}, "no 't' labels"),  # the data has covariates only
])
def test_bad_options_are_named(factory, options, match):
    info = ModelInfo({"x": 2, "t": 1}, {"x": 3}, 10)
    with pytest.raises(ConfigError, match=match):
        factory(info, **options)


def test_shuffle_dimensions_permutes_each_column_on_its_own():
    torch.manual_seed(0)
    z = torch.arange(200.0).reshape(100, 2) + torch.tensor([0.0, 0.5])  # column 1 = column 0 + 0.5
    shuffled = shuffle_dimensions(z)
    for j in range(2):
        assert torch.equal(shuffled[:, j].sort().values, z[:, j].sort().values)  # a permutation of column j
    assert not torch.equal(shuffled[:, 1] - shuffled[:, 0], torch.full((100,), 0.5))  # rows broken apart


def test_discriminator_estimates_the_total_correlation():
    """Trained alone, D's mean logit on real codes approaches the TC: −½ log(1 − ρ²) for a correlated pair."""
    rho = 0.8
    true_tc = -0.5 * math.log(1 - rho**2)  # 0.511 nats
    chol = torch.linalg.cholesky(torch.tensor([[1.0, rho, 0.0], [rho, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    estimates = {}
    for name, mixing in (("correlated", chol), ("independent", torch.eye(3))):
        torch.manual_seed(0)
        reg = TotalCorrelation(ModelInfo({"z": 3}, {}, 10), n_hidden=64, n_layers=2)
        optimizer = torch.optim.Adam(reg.adversary.parameters(), lr=3e-3)
        for _ in range(600):
            optimizer.zero_grad()
            reg.adversary_loss(gaussian_context(torch.randn(256, 3) @ mixing.T)).backward()
            optimizer.step()
        with torch.no_grad():
            estimates[name] = float(reg.loss(gaussian_context(torch.randn(8192, 3) @ mixing.T)))
    # measured: correlated 0.571 (true 0.511), independent 0.004
    assert abs(estimates["correlated"] - true_tc) < 0.15, estimates
    assert abs(estimates["independent"]) < 0.1, estimates


def test_hsic_penalty_is_the_hsic_statistic_and_reaches_the_latents():
    torch.manual_seed(0)
    x = torch.nn.functional.one_hot(torch.randint(3, (64,)), 3).float()
    z = (x @ torch.randn(3, 2) + 0.5 * torch.randn(64, 2)).requires_grad_()
    term = HSICPenalty(ModelInfo({"z": 2}, {"x": 3}, 10)).loss(gaussian_context(z, {"x": x}))
    assert float(term.detach()) == pytest.approx(hsic(z.detach().numpy(), x.numpy()).statistic, rel=1e-5)
    term.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_total_correlation_gradient_reaches_the_encoder(small_adata):
    from fcrkit.data.loaders import CellData
    from fcrkit.train.trainer import Trainer, TrainingPlan

    model = FactorVAE(small_adata, n_latent=4, n_hidden=32, seed=0)
    data = CellData.from_anndata(small_adata, model.setup)
    trainer = Trainer(model.module, data, TrainingPlan(max_epochs=1))
    _, ctx = trainer._losses(data.batch(torch.arange(64)), data.n_obs, 0.0, with_terms=False)
    model.module.zero_grad()
    model.module.regularizers["total_correlation"].loss(ctx).backward()
    grads = [p.grad for p in model.module.encoders["z"].parameters()]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert set(trainer.adversaries) == {"total_correlation"}  # D has its own optimiser


# -- the recipes' arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("recipe, kwargs, match", [
    (FactorVAE, {"gamma": -1.0}, "gamma=-1.0"),
    (FactorVAE, {"beta": float("nan")}, "beta=nan"),
    (FactorVAE, {"n_latent": 1}, "n_latent=1"),
    (IVAE, {"aux": ("x", "s")}, "'s' is not a label"),
    (IVAE, {"aux": ()}, r"aux=\(\)"),
    (IVAE, {"aux": ("x", "x")}, "names a label twice"),
    (IVAE, {"n_latent": 0}, "n_latent=0"),
    (HCV, {"nuisance": "batch"}, "nuisance='batch'"),
    (HCV, {"weight": -5}, "weight=-5"),
    (HCV, {"use": "mean"}, "use='mean'"),
])
def test_bad_recipe_arguments_are_named(small_adata, recipe, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        recipe(small_adata, **kwargs)


def test_specs_wire_the_parts(small_adata):
    fvae = FactorVAE(small_adata, gamma=6.0, beta=2.0, discriminator_steps=3).spec
    assert [(r.name, r.weight) for r in fvae.regularizers] == [("kl", 2.0), ("total_correlation", 6.0)]
    assert fvae.regularizers[1].options["adversary_steps"] == 3
    assert [r.name for r in FactorVAE(small_adata, gamma=0).spec.regularizers] == ["kl"]  # a β-VAE
    ivae = IVAE(small_adata, aux="x").spec.blocks[0]
    assert (ivae.prior.name, ivae.prior.conditions, ivae.encoder.conditions) == ("conditional_gaussian", ("x",), ("x",))
    assert IVAE(small_adata).spec.decoder.conditions == ()  # p(y | z): the decoder does not see u
    hcv = HCV(small_adata, nuisance="t", weight=50).spec
    assert hcv.decoder.conditions == ("t",)
    assert [(r.name, r.weight, r.options.get("label")) for r in hcv.regularizers] == [
        ("kl", 1.0, None), ("hsic", 50.0, "t")]
    assert HCV(small_adata, decoder_sees_nuisance=False).spec.decoder.conditions == ()


def test_ivae_refuses_labels_the_data_lacks():
    adata = fcrkit.simulate.basic(n_cells=100, n_genes=20, n_latent=2, seed=0)
    fcrkit.setup_anndata(adata, covariate_keys=["cell_type"])  # no treatment registered
    with pytest.raises(ConfigError, match="'t'"):
        IVAE(adata, aux=("x", "t"))
    IVAE(adata, aux="x")  # fine


@pytest.mark.parametrize("recipe, key", [(FactorVAE, "X_factorvae"), (IVAE, "X_ivae"), (HCV, "X_hcv")])
def test_save_load_round_trip(tmp_path, recipe, key):
    adata = tiny_adata(n_cells=200, n_genes=20)
    model = recipe(adata, n_latent=3, n_hidden=16, seed=0)
    model.train(2, batch_size=64, seed=0, progress_bar=False)
    latent = model.get_latent_representation(as_dict=True)
    assert list(latent) == [key] and latent[key].shape == (200, 3)
    model.save(tmp_path / "m")
    for cls in (recipe, Model):
        loaded = cls.load(tmp_path / "m", adata)
        assert np.array_equal(loaded.get_latent_representation(as_dict=True)[key], latent[key])


# -- what each model is for ---------------------------------------------------------------------------
def test_factorvae_codes_have_less_total_correlation_than_betavae():
    """Same data, β = 1, same architecture and seeds: γ·TC lowers the codes' total correlation.

    Measured independently of FactorVAE's own discriminator: the Gaussian total correlation
    ``½ (Σ_j log var_j − log det Σ)`` of one posterior sample per cell (samples of the aggregate
    posterior q(z), the distribution whose TC FactorVAE penalises). Measured (seeds 0-3), one torch
    thread: β-VAE 0.678 / 0.280 / 0.088 / 0.113, FactorVAE (γ = 10) 0.057 / 0.042 / 0.017 / 0.034;
    two threads: β-VAE 0.619 / 0.105 / 0.079 / 0.139, FactorVAE 0.072 / 0.078 / 0.006 / 0.027.
    Lower at every seed, and the median at most 0.41 of the β-VAE's: the test asks for both (lower
    at every seed, median below half), not a mean that one seed can carry.
    """
    adata = fcrkit.simulate.basic(n_cells=1000, n_genes=200, n_latent=4, library_size=5000.0, seed=0)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"])
    tc: dict[str, list[float]] = {"betavae": [], "factorvae": []}
    for seed in (0, 1, 2, 3):
        for name, model in (("betavae", BetaVAE(adata, n_latent=4, beta=1.0, n_hidden=64, seed=seed)),
                            ("factorvae", FactorVAE(adata, n_latent=4, gamma=10.0, beta=1.0, n_hidden=64, seed=seed))):
            model.train(40, batch_size=128, seed=seed, progress_bar=False)
            torch.manual_seed(0)
            codes = model.get_latent_representation(give_mean=False)
            tc[name].append(gaussian_tc(codes))
    assert all(f < b for f, b in zip(tc["factorvae"], tc["betavae"])), tc
    assert np.median(tc["factorvae"]) < 0.5 * np.median(tc["betavae"]), tc


def ivae_world(n_cells: int = 2000, n_genes: int = 50, n_latent: int = 3, n_labels: int = 10, *,
               scale_range: tuple[float, float] = (0.2, 3.0), seed: int = 0) -> AnnData:
    """Counts from ``z ~ N(0, diag s(u)²)`` whose per-dimension scales depend on a label ``u`` (``obs["u"]``).

    The label changes only the variances (log-uniform on ``scale_range``, per label and dimension):
    the condition of the iVAE identifiability theorem, with no cluster means a plain VAE could align
    to. ``z`` goes through a random leaky-ReLU (0.2) MLP ``n_latent -> 16 -> 16 -> n_genes`` with
    (semi-)orthogonal weights and N(0, 1) biases, softmax, library sizes LogNormal(log 3000, 0.3²) and
    NB counts (θ = 5). True latents in ``obsm["z_true"]``; registered with ``u`` as the covariate.
    """
    rng = np.random.default_rng(seed)
    u = rng.integers(n_labels, size=n_cells)
    scales = np.exp(rng.uniform(*np.log(scale_range), size=(n_labels, n_latent)))
    z = scales[u] * rng.standard_normal((n_cells, n_latent))
    widths = [n_latent, 16, 16, n_genes]
    h = z
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        q, _ = np.linalg.qr(rng.standard_normal((max(a, b), max(a, b))))
        h = h @ q[:a, :b] * np.sqrt(max(a, b) / a) + rng.normal(0.0, 1.0, size=b)
        if i < len(widths) - 2:
            h = np.where(h > 0, h, 0.2 * h)
    fractions = np.exp(h - h.max(axis=1, keepdims=True))
    fractions /= fractions.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(3000.0), 0.3, size=(n_cells, 1))
    counts = rng.poisson(rng.gamma(5.0, library * fractions / 5.0)).astype(np.int32)
    obs = pd.DataFrame({"u": pd.Categorical([f"u{k}" for k in u])}, index=[f"cell_{i}" for i in range(n_cells)])
    adata = AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)]))
    adata.obsm["z_true"] = z.astype(np.float32)
    fcrkit.setup_anndata(adata, covariate_keys=["u"])
    return adata


def test_ivae_recovers_latents_that_betavae_does_not():
    """Latent variances that depend on a label: the iVAE prior given u identifies z, a N(0, I) prior does not.

    MCC (Pearson, square Hungarian match, fcrkit.metrics.mcc) of posterior means against the true
    latents, 10 labels, 40 epochs, lr 3e-3. (With 20 labels of 100 cells the iVAE was less reliable:
    0.66, 0.83, 0.76 vs 0.60, 0.71, 0.65. On ``simulate.interaction`` with aux = (x, t), whose
    conditions differ mostly in their means, the two tied at about 0.58.)

    The seeds are fixed, but the result still depends on the floating-point arithmetic (the number of
    torch threads, the CPU's kernels): a different rounding early in training leads to another run,
    as a different seed does. So the margin is set by the spread over seeds. Measured with one torch
    thread (as under ``pytest -n 2``), model/train seeds 0-11, iVAE vs β-VAE (β = 1):
    0.879/0.667, 0.869/0.779, 0.736/0.699, 0.787/0.708, 0.754/0.610, 0.753/0.790, 0.908/0.675,
    0.777/0.733, 0.837/0.724, 0.687/0.750, 0.561/0.747, 0.809/0.640: iVAE won 9 of 12 pairs, by
    +0.07 on average (paired sd 0.12). The test's statistic, the gap between the medians of four
    seeds, was 0.124 on seeds 0-3 (the test's), 0.062 on seeds 4-7 and 0.012 on seeds 8-11; a run
    on another machine gave 0.079 on seeds 0-3 (0.818 vs 0.739). The former margin of 0.08 and the
    former floor of 0.8 for the iVAE median (0.766 and 0.748 on seeds 4-7 and 8-11) lay inside that
    spread; the smallest gap measured, 0.012, leaves room for no margin above 0.
    """
    adata = ivae_world()
    scores: dict[str, list[float]] = {"ivae": [], "betavae": []}
    for seed in (0, 1, 2, 3):
        for name, model in (("ivae", IVAE(adata, n_latent=3, aux="x", n_hidden=64, seed=seed)),
                            ("betavae", BetaVAE(adata, n_latent=3, beta=1.0, n_hidden=64, seed=seed))):
            model.train(40, batch_size=128, lr=3e-3, seed=seed, progress_bar=False)
            z = model.get_latent_representation()
            scores[name].append(float(mcc(adata.obsm["z_true"], z)))
    # margin 0: the four-seed median gap ranged 0.012-0.124 over disjoint seed sets (see the docstring)
    assert np.median(scores["ivae"]) > np.median(scores["betavae"]), scores


def test_hcv_penalty_lowers_hsic_between_latent_and_nuisance():
    """HSIC(posterior means, one-hot cell type) on all 1000 cells, λ = 0 vs the default λ = 1000.

    ``simulate.basic`` shapes the latent by cell type, so without the penalty the latent keeps it
    even though the decoder sees the cell type. Measured (fcrkit.metrics.hsic, seed 0): 0.0183 with
    λ = 0, 0.0035 with λ = 1000 (seed 1: 0.0186 and 0.0037); the validation loss rose from 190 to 199.
    """
    adata = fcrkit.simulate.basic(n_cells=1000, n_genes=60, n_latent=4, seed=0)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"])
    cell_type = np.eye(4)[adata.obs["cell_type"].cat.codes.to_numpy()]
    measured = {}
    for weight in (0.0, 1000.0):
        model = HCV(adata, n_latent=4, nuisance="x", weight=weight, n_hidden=64, seed=0)
        model.train(30, batch_size=128, seed=0, progress_bar=False)
        measured[weight] = hsic(model.get_latent_representation(), cell_type).statistic
    assert measured[1000.0] < 0.4 * measured[0.0], measured
