"""Tests of the built-in likelihoods against independent float64 formulas (numpy / scipy)."""

from __future__ import annotations

import math

import numpy as np
import pluggy
import pytest
import torch
from scipy import stats
from scipy.special import expit, gammaln, log_softmax

from fcrkit import hookspecs
from fcrkit.components import likelihoods
from fcrkit.components.distributions import GeneNegativeBinomial, nb_log_prob
from fcrkit.components.likelihoods import (
    LIBRARY_MIN,
    THETA_MAX,
    THETA_MIN,
    Gaussian,
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
)
from fcrkit.errors import ConfigError
from fcrkit.protocols import Likelihood, instance_problems

F64 = torch.float64

# --------------------------------------------------------------------- reference formulas


def ref_log_mu(raw: np.ndarray, library: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(library, LIBRARY_MIN)) + log_softmax(raw, axis=-1)


def ref_nb_logpmf(y: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Elementwise NB log-pmf with mean ``mu`` and inverse dispersion ``theta`` (closed form)."""
    return (
        gammaln(y + theta)
        - gammaln(theta)
        - gammaln(y + 1)
        + theta * (np.log(theta) - np.log(theta + mu))
        + y * (np.log(mu) - np.log(theta + mu))
    )


def ref_zinb_logpmf(
    y: np.ndarray, mu: np.ndarray, theta: np.ndarray, gate: np.ndarray
) -> np.ndarray:
    pi, keep = expit(gate), expit(-gate)  # keep = 1 - pi, without cancellation for large gates
    nb = ref_nb_logpmf(y, mu, theta)
    return np.where(y == 0, np.log(pi + keep * np.exp(nb)), np.log(keep) + nb)


# --------------------------------------------------------------------- fixtures / helpers

# One gene per column: tiny to huge inverse dispersion (1e4 is close to a Poisson).
THETAS = np.array([1e-4, 1e-3, 1e-2, 1.0, 1e2, 1e4])
G = len(THETAS)
# Library sizes varying per cell, from 1 count to 1e6.
LIBRARY = np.array([[1.0], [37.0], [1e3], [1e5], [1e6]])
B = len(LIBRARY)


def raw_means(seed: int = 0, spread: float = 5.0) -> np.ndarray:
    """Decoder outputs whose softmax spans many orders of magnitude (tiny and large means)."""
    return np.random.default_rng(seed).normal(size=(B, G)) * spread


def count_matrices(mu: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "zeros": np.zeros_like(mu),
        "1e4": np.full_like(mu, 1e4),
        "1e5": np.full_like(mu, 1e5),
        "near_mean": np.round(mu),
        "mixed": rng.choice([0.0, 1.0, 3.0, 250.0, 1e4, 1e5], size=mu.shape),
    }


def nb_module(cls=NegativeBinomial, thetas: np.ndarray = THETAS, dtype=F64):
    module = cls(len(thetas)).to(dtype)
    with torch.no_grad():
        module.log_theta.copy_(torch.as_tensor(np.log(thetas)))
    return module


def t(a: np.ndarray, dtype=F64) -> torch.Tensor:
    return torch.as_tensor(a, dtype=dtype)


def params_for(module, b: int = B, g: int = G, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {h: torch.randn(b, g, generator=gen, dtype=F64) for h in module.heads}


ALL = {
    "nb": lambda g: NegativeBinomial(g),
    "zinb": lambda g: ZeroInflatedNegativeBinomial(g),
    "poisson": lambda g: Poisson(g),
    "gaussian": lambda g: Gaussian(g),
    "gaussian-gene-cell": lambda g: Gaussian(g, scale="gene-cell"),
}


# --------------------------------------------------------------------- declarations / shapes


@pytest.mark.parametrize(
    ("name", "input_kind", "heads"),
    [
        ("nb", "counts", ("mean",)),
        ("zinb", "counts", ("mean", "gate")),
        ("poisson", "counts", ("mean",)),
        ("gaussian", "real", ("mean",)),
        ("gaussian-gene-cell", "real", ("mean", "scale")),
    ],
)
def test_declarations_and_protocol(name, input_kind, heads):
    module = ALL[name](G)
    assert module.input_kind == input_kind
    assert tuple(module.heads) == heads
    assert isinstance(module, torch.nn.Module)
    assert isinstance(module, Likelihood)
    assert instance_problems("likelihood", module) == []


def test_heads_is_per_instance_for_gaussian():
    assert Gaussian(3, scale="gene-cell").heads == ("mean", "scale")
    assert Gaussian(3).heads == ("mean",)
    assert Gaussian.heads == ("mean",)  # the class default is untouched


@pytest.mark.parametrize("name", list(ALL))
def test_shapes(name):
    module = ALL[name](G).double()
    params = params_for(module)
    library = t(LIBRARY)
    d = module.distribution(params, library)
    assert d.batch_shape == (B,)
    assert d.event_shape == (G,)
    y = d.sample()
    assert y.shape == (B, G)
    assert d.log_prob(y).shape == (B,)
    assert module.mean(params, library).shape == (B, G)


def test_nb_parameters():
    module = NegativeBinomial(4)
    assert module.log_theta.shape == (4,)
    assert [n for n, _ in module.named_parameters()] == ["log_theta"]
    torch.testing.assert_close(module.theta, torch.ones(4))  # init 0 -> theta = 1
    with torch.no_grad():
        module.log_theta.copy_(torch.tensor([-100.0, math.log(1e-4), math.log(1e4), 100.0]))
    expected = torch.tensor([THETA_MIN, 1e-4, 1e4, THETA_MAX])
    torch.testing.assert_close(module.theta, expected, rtol=1e-6, atol=0)
    assert list(dict(Poisson(3).named_parameters())) == []
    assert list(dict(Gaussian(3).named_parameters())) == ["log_scale"]
    assert list(dict(Gaussian(3, scale="gene-cell").named_parameters())) == []


# --------------------------------------------------------------------- log_prob vs closed forms


@pytest.mark.parametrize("case", ["zeros", "1e4", "1e5", "near_mean", "mixed"])
@pytest.mark.parametrize("spread", [0.5, 5.0, 15.0])
def test_nb_log_prob_float64(case, spread):
    raw = raw_means(spread=spread)
    mu = np.exp(ref_log_mu(raw, LIBRARY))
    y = count_matrices(mu)[case]
    module = nb_module()
    d = module.distribution({"mean": t(raw)}, t(LIBRARY))
    expected = ref_nb_logpmf(y, mu, THETAS)
    got = d.log_prob(t(y)).detach().numpy()
    np.testing.assert_allclose(got, expected.sum(-1), rtol=1e-9, atol=1e-8)
    for gene in range(G):  # each gene alone: the per-entry values, not just their sum
        alone = GeneNegativeBinomial(t(raw), t(LIBRARY).log(), module.bounded_log_theta())
        single = nb_log_prob(t(y)[:, gene:gene + 1], torch.zeros(B, 1, dtype=F64), alone.log_mean[:, gene:gene + 1],
                             module.bounded_log_theta()[gene:gene + 1])  # one gene: mu = library
        np.testing.assert_allclose(single.detach().numpy(), expected[:, gene], rtol=1e-9, atol=1e-8)


def test_nb_log_prob_float32_typical_values():
    """float32 sanity check at typical sizes: ~1e-4 relative on the per-cell sum."""
    thetas = np.array([0.05, 0.5, 2.0, 10.0, 100.0])
    raw = np.random.default_rng(2).normal(size=(4, 5))
    library = np.array([[150.0], [1e3], [5e3], [2e4]])
    mu = np.exp(ref_log_mu(raw, library))
    y = np.random.default_rng(3).poisson(mu).astype(float)
    module = nb_module(thetas=thetas, dtype=torch.float32)
    d = module.distribution({"mean": t(raw, torch.float32)}, t(library, torch.float32))
    got = d.log_prob(t(y, torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(got, ref_nb_logpmf(y, mu, thetas).sum(-1), rtol=1e-4)


def test_nb_log_prob_float32_large_counts():
    """With counts ~1e5 float32 cannot resolve the lgamma differences better than ~eps * lgamma.

    The error must stay within a few float32 ulps of the magnitudes involved (an O(1) formula
    mistake would not).
    """
    raw = raw_means()
    mu = np.exp(ref_log_mu(raw, LIBRARY))
    module = nb_module(dtype=torch.float32)
    d = module.distribution({"mean": t(raw, torch.float32)}, t(LIBRARY, torch.float32))
    for y in count_matrices(mu).values():
        got = d.log_prob(t(y, torch.float32)).detach().double().numpy()
        expected = ref_nb_logpmf(y, mu, THETAS).sum(-1)
        magnitude = (
            np.abs(gammaln(y + THETAS)) + np.abs(gammaln(THETAS)) + gammaln(y + 1) + 1.0
        ).sum(-1)
        assert np.all(np.abs(got - expected) <= 1e-7 * magnitude + 1e-4 * np.abs(expected))


@pytest.mark.parametrize("case", ["zeros", "1e4", "near_mean", "mixed"])
@pytest.mark.parametrize("gate_scale", [1.0, 30.0, 100.0])
def test_zinb_log_prob_float64(case, gate_scale):
    raw = raw_means()
    mu = np.exp(ref_log_mu(raw, LIBRARY))
    y = count_matrices(mu)[case]
    # gate logits from very negative (no inflation) to very positive (almost always zero)
    gate = np.random.default_rng(4).choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=y.shape) * gate_scale
    module = nb_module(ZeroInflatedNegativeBinomial)
    d = module.distribution({"mean": t(raw), "gate": t(gate)}, t(LIBRARY))
    expected = ref_zinb_logpmf(y, mu, THETAS, gate)
    np.testing.assert_allclose(
        d.base_dist.log_prob(t(y)).detach().numpy(), expected, rtol=1e-9, atol=1e-8
    )
    np.testing.assert_allclose(d.log_prob(t(y)).detach().numpy(), expected.sum(-1), rtol=1e-9)


def test_zinb_float32_sanity():
    thetas = np.array([0.05, 0.5, 2.0, 10.0, 100.0])
    raw = np.random.default_rng(2).normal(size=(4, 5))
    library = np.array([[150.0], [1e3], [5e3], [2e4]])
    gate = np.random.default_rng(5).normal(size=(4, 5)) * 4
    mu = np.exp(ref_log_mu(raw, library))
    y = np.random.default_rng(3).poisson(mu).astype(float)
    y[:, 0] = 0.0
    module = nb_module(ZeroInflatedNegativeBinomial, thetas=thetas, dtype=torch.float32)
    p = {"mean": t(raw, torch.float32), "gate": t(gate, torch.float32)}
    got = module.distribution(p, t(library, torch.float32)).log_prob(t(y, torch.float32))
    expected = ref_zinb_logpmf(y, mu, thetas, gate).sum(-1)
    np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=1e-4)


def test_zinb_with_no_inflation_is_nb():
    raw = raw_means()
    y = count_matrices(np.exp(ref_log_mu(raw, LIBRARY)))["mixed"]
    nb, zinb = nb_module(), nb_module(ZeroInflatedNegativeBinomial)
    library = t(LIBRARY)
    lp_nb = nb.distribution({"mean": t(raw)}, library).log_prob(t(y))
    gate = torch.full((B, G), -800.0, dtype=F64)
    lp_zinb = zinb.distribution({"mean": t(raw), "gate": gate}, library).log_prob(t(y))
    torch.testing.assert_close(lp_zinb, lp_nb, rtol=1e-10, atol=1e-10)  # NB has its own, faster formula


@pytest.mark.parametrize("spread", [0.5, 5.0, 15.0])
def test_poisson_log_prob(spread):
    raw = raw_means(spread=spread)
    mu = np.exp(ref_log_mu(raw, LIBRARY))
    module = Poisson(G)
    d = module.distribution({"mean": t(raw)}, t(LIBRARY))
    for y in count_matrices(mu).values():
        expected = stats.poisson.logpmf(y, mu)
        np.testing.assert_allclose(d.base_dist.log_prob(t(y)).numpy(), expected, rtol=1e-9)
        np.testing.assert_allclose(d.log_prob(t(y)).numpy(), expected.sum(-1), rtol=1e-9)


def test_poisson_underflowing_rate_stays_finite():
    for dtype in (torch.float32, F64):
        raw = torch.tensor([[0.0, -800.0, -2000.0]], dtype=dtype)  # rates exp(-800) underflow
        library = torch.tensor([[10.0]], dtype=dtype)
        module = Poisson(3)
        d = module.distribution({"mean": raw}, library)
        assert torch.isfinite(d.log_prob(torch.tensor([[10.0, 0.0, 0.0]], dtype=dtype))).all()
        assert torch.isfinite(d.log_prob(torch.tensor([[8.0, 1.0, 1.0]], dtype=dtype))).all()
        assert (module.mean({"mean": raw}, library) > 0).all()


def test_gaussian_gene_scale_log_prob():
    rng = np.random.default_rng(6)
    loc, y = rng.normal(size=(B, G)), rng.normal(size=(B, G)) * 3
    log_scale = np.log([1e-3, 0.1, 0.5, 1.0, 2.0, 50.0])
    module = Gaussian(G, min_scale=1e-4).double()
    with torch.no_grad():
        module.log_scale.copy_(t(log_scale))
    d = module.distribution({"mean": t(loc)}, t(LIBRARY))
    expected = stats.norm.logpdf(y, loc=loc, scale=np.exp(log_scale) + 1e-4)
    np.testing.assert_allclose(d.log_prob(t(y)).detach().numpy(), expected.sum(-1), rtol=1e-10)
    # the library size is ignored
    d0 = module.distribution({"mean": t(loc)}, torch.zeros(B, 1, dtype=F64))
    torch.testing.assert_close(d0.log_prob(t(y)), d.log_prob(t(y)))


def test_gaussian_gene_cell_scale_log_prob():
    rng = np.random.default_rng(7)
    loc, y = rng.normal(size=(B, G)), rng.normal(size=(B, G))
    raw_scale = rng.normal(size=(B, G)) * 10  # softplus of very negative and positive values
    module = Gaussian(G, scale="gene-cell", min_scale=1e-3)
    d = module.distribution({"mean": t(loc), "scale": t(raw_scale)}, t(LIBRARY))
    sigma = np.logaddexp(0.0, raw_scale) + 1e-3
    expected = stats.norm.logpdf(y, loc=loc, scale=sigma)
    np.testing.assert_allclose(d.log_prob(t(y)).numpy(), expected.sum(-1), rtol=1e-10)


def test_gaussian_constant_gene_is_bounded_by_min_scale():
    module = Gaussian(2, scale="gene-cell", min_scale=1e-4)
    params = {"mean": torch.zeros(1, 2), "scale": torch.full((1, 2), -1e4)}
    lp = module.distribution(params, torch.ones(1, 1)).log_prob(torch.zeros(1, 2))
    bound = 2 * stats.norm.logpdf(0.0, scale=1e-4)
    assert torch.isfinite(lp).all()
    assert lp.item() == pytest.approx(bound, rel=1e-5)


# --------------------------------------------------------------------- means


def test_count_means():
    raw = raw_means()
    library = t(LIBRARY)
    mu = LIBRARY * np.exp(log_softmax(raw, axis=-1))
    for module in (nb_module(), Poisson(G)):
        got = module.mean({"mean": t(raw)}, library).detach().numpy()
        np.testing.assert_allclose(got, mu, rtol=1e-12)
    gate = np.random.default_rng(8).normal(size=(B, G)) * 20
    zinb = nb_module(ZeroInflatedNegativeBinomial)
    got = zinb.mean({"mean": t(raw), "gate": t(gate)}, library).detach().numpy()
    np.testing.assert_allclose(got, expit(-gate) * mu, rtol=1e-12)


def test_gaussian_mean_is_identity():
    loc = torch.randn(3, 4, dtype=F64)
    for module in (Gaussian(4), Gaussian(4, scale="gene-cell")):
        params = {"mean": loc, "scale": torch.randn(3, 4, dtype=F64)}
        assert torch.equal(module.mean(params, torch.full((3, 1), 7.0)), loc)


def test_mean_matches_distribution_mean():
    raw = torch.randn(3, 4, dtype=F64)
    gate = torch.randn(3, 4, dtype=F64)
    library = torch.tensor([[5.0], [50.0], [500.0]], dtype=F64)
    for module in (nb_module(thetas=np.array([0.1, 1.0, 10.0, 100.0])), Poisson(4)):
        d = module.distribution({"mean": raw}, library)
        torch.testing.assert_close(d.mean, module.mean({"mean": raw}, library))
    zinb = nb_module(ZeroInflatedNegativeBinomial, thetas=np.array([0.1, 1.0, 10.0, 100.0]))
    params = {"mean": raw, "gate": gate}
    torch.testing.assert_close(zinb.distribution(params, library).mean, zinb.mean(params, library))


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson", "gaussian-gene-cell"])
def test_empirical_mean_of_samples(name):
    torch.manual_seed(0)
    thetas = np.array([0.5, 2.0, 10.0])
    if name in ("nb", "zinb"):
        cls = ZeroInflatedNegativeBinomial if name == "zinb" else NegativeBinomial
        module = nb_module(cls, thetas)
    else:
        module = ALL[name](3).double()
    params = {
        "mean": torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, -2.0]], dtype=F64),
        "gate": torch.tensor([[-1.0, 0.0, 1.0], [0.5, -2.0, 0.0]], dtype=F64),
        "scale": torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 2.0]], dtype=F64),
    }
    params = {h: params[h] for h in module.heads}
    library = torch.tensor([[20.0], [200.0]], dtype=F64)
    n = 40_000
    with torch.no_grad():
        samples = module.distribution(params, library).sample((n,))
        mean = module.mean(params, library)
    assert samples.shape == (n, 2, 3)
    se = samples.std(0) / math.sqrt(n)
    assert torch.all((samples.mean(0) - mean).abs() < 5 * se + 1e-3), (samples.mean(0), mean)


# --------------------------------------------------------------------- gradients / edge cases


@pytest.mark.parametrize("cls", [NegativeBinomial, ZeroInflatedNegativeBinomial])
def test_gradients_are_finite_and_correct(cls):
    raw = torch.tensor(raw_means(spread=3.0), dtype=F64, requires_grad=True)
    gate = torch.tensor(np.random.default_rng(9).normal(size=(B, G)) * 3, requires_grad=True)
    mu = np.exp(ref_log_mu(raw.detach().numpy(), LIBRARY))
    y = t(count_matrices(mu)["mixed"])
    y[:, 0] = 0.0  # y = 0 with theta = 1e-4
    module = nb_module(cls)
    params = {"mean": raw, "gate": gate}
    loss = -module.distribution(params, t(LIBRARY)).log_prob(y).sum()
    loss.backward()
    for grad in (module.log_theta.grad, raw.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert (module.log_theta.grad != 0).all()

    # autograd against finite differences, tiny theta included
    class LogProb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lik = module

        def forward(self, raw_, gate_):
            return self.lik.distribution({"mean": raw_, "gate": gate_}, t(LIBRARY)).log_prob(y)

    def log_prob(log_theta, raw_, gate_):
        return torch.func.functional_call(LogProb(), {"lik.log_theta": log_theta}, (raw_, gate_))

    # (moderate counts: with y ~ 1e5 the log-prob is ~1e6 and finite differences are all noise)
    y = y.clamp(max=250.0)
    inputs = tuple(x.detach().requires_grad_() for x in (t(np.log(THETAS)), raw, gate))
    assert torch.autograd.gradcheck(log_prob, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gaussian_gradients_flow_to_log_scale():
    module = Gaussian(3)
    loc = torch.zeros(2, 3, requires_grad=True)
    lp = module.distribution({"mean": loc}, torch.ones(2, 1)).log_prob(torch.randn(2, 3))
    lp.sum().backward()
    assert torch.isfinite(module.log_scale.grad).all() and (module.log_scale.grad != 0).all()
    assert torch.isfinite(loc.grad).all()


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_empty_cell_has_finite_log_prob(name, dtype):
    """A cell with library 0 and no counts: expected counts ~0, log-probability finite and ~0."""
    module = ALL[name](G).to(dtype)
    params = {h: torch.randn(2, G, dtype=dtype, requires_grad=True) for h in module.heads}
    library = torch.tensor([[0.0], [100.0]], dtype=dtype)
    y = torch.zeros(2, G, dtype=dtype)
    y[1, 0] = 100.0
    lp = module.distribution(params, library).log_prob(y)
    assert torch.isfinite(lp).all()
    assert lp[0].item() > -1e-6 * G
    mean = module.mean(params, library)
    assert torch.isfinite(mean).all() and (mean[0] < 1e-7).all()
    lp.sum().backward()
    for p in [*params.values(), *module.parameters()]:
        assert torch.isfinite(p.grad).all()
    # counts in an "empty" cell are improbable but still finite
    assert torch.isfinite(module.distribution(params, library[:1]).log_prob(y[1:])).all()


# --------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("factory", "option", "value", "allowed"),
    [
        (NegativeBinomial, "dispersion", "gene-cell", "'gene'"),
        (NegativeBinomial, "dispersion", "genes", "'gene'"),
        (ZeroInflatedNegativeBinomial, "dispersion", "cell", "'gene'"),
        (Gaussian, "scale", "cell", "'gene', 'gene-cell'"),
        (Gaussian, "scale", None, "'gene', 'gene-cell'"),
    ],
)
def test_bad_choice_raises_config_error(factory, option, value, allowed):
    with pytest.raises(ConfigError) as info:
        factory(4, **{option: value})
    message = str(info.value)
    assert option in message and repr(value) in message and allowed in message
    assert isinstance(info.value, ValueError)


def test_bad_choice_suggests_close_value():
    with pytest.raises(ConfigError, match="Did you mean 'gene'"):
        NegativeBinomial(4, dispersion="genes")


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "1e-4", True])
def test_bad_min_scale(value):
    with pytest.raises(ConfigError, match="min_scale"):
        Gaussian(4, min_scale=value)


@pytest.mark.parametrize(
    "factory", [NegativeBinomial, ZeroInflatedNegativeBinomial, Poisson, Gaussian]
)
@pytest.mark.parametrize("n_genes", [0, -3, 2.5])
def test_bad_n_genes(factory, n_genes):
    with pytest.raises(ConfigError, match="n_genes"):
        factory(n_genes)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        NegativeBinomial(4, "gene")
    with pytest.raises(TypeError):
        Gaussian(4, "gene-cell")


# --------------------------------------------------------------------- plugin hook


class FakeRegistry:
    def __init__(self):
        self.calls = []

    def likelihood(self, name, factory, summary=None):
        self.calls.append((name, factory))

    def __getattr__(self, kind):  # any other kind would be a mistake
        raise AssertionError(f"registered a {kind}")


EXPECTED = [
    ("nb", NegativeBinomial),
    ("zinb", ZeroInflatedNegativeBinomial),
    ("poisson", Poisson),
    ("gaussian", Gaussian),
]


def test_hook_registers_the_four_likelihoods():
    registry = FakeRegistry()
    likelihoods.fcrkit_register_components(registry)
    assert registry.calls == EXPECTED


def test_hook_through_pluggy():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(likelihoods)
    registry = FakeRegistry()
    pm.hook.fcrkit_register_components(registry=registry)
    assert registry.calls == EXPECTED


def test_registry_summaries_are_short_first_docstring_lines():
    for _, cls in EXPECTED:
        first = cls.__doc__.strip().splitlines()[0]
        assert 10 < len(first) <= 100
