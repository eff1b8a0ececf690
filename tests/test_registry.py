"""Tests of the component registry: built-ins, run-time plugins, the plugin contract, entry points."""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import fcrkit
import fcrkit.cli
import fcrkit.registry as registry_module
from fcrkit.components.likelihoods import NegativeBinomial
from fcrkit.errors import ConfigError, PluginError, UnknownComponentError
from fcrkit.registry import ComponentRecord, PluginLoadWarning, Registry, get_registry, plugin, reload_plugins

BUILTINS = {
    ("encoder", "mlp"): "fcrkit.components.encoders",
    ("prior", "standard_normal"): "fcrkit.components.priors",
    ("prior", "conditional_gaussian"): "fcrkit.components.priors",
    ("decoder", "mlp"): "fcrkit.components.decoders",
    ("likelihood", "nb"): "fcrkit.components.likelihoods",
    ("likelihood", "zinb"): "fcrkit.components.likelihoods",
    ("likelihood", "gaussian"): "fcrkit.components.likelihoods",
    ("likelihood", "poisson"): "fcrkit.components.likelihoods",
    ("regularizer", "kl"): "fcrkit.components.regularizers",
    ("treatment_encoder", "features"): "fcrkit.components.treatments",
}


def assert_builtins(registry: Registry) -> None:
    """Every built-in is registered, by the built-in module that provides it."""
    for (kind, name), module in BUILTINS.items():
        record = registry.get(kind, name)
        assert record.plugin == module, (kind, name, record.plugin)
        assert record.origin == f"fcrkit {fcrkit.__version__} (built-in)"


def make_plugin(module_name: str, register: Callable[[Any], None]) -> types.ModuleType:
    """A plugin module whose hook calls ``register(registry)``."""
    mod = types.ModuleType(module_name)

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        register(registry)

    mod.fcrkit_register_components = fcrkit_register_components
    return mod


# -- components a plugin could ship -----------------------------------------------------------------
class L2Means:
    """L2 penalty on the posterior means of every latent block."""

    def __init__(self, info):
        self.blocks = tuple(info.block_dims)

    def loss(self, ctx):
        return sum(ctx.loc[b].pow(2).sum(-1).mean() for b in ctx.loc)


class ScaledNormal(nn.Module):
    """Centred normal prior with a fixed scale."""

    def __init__(self, dim, label_dims, *, scale: float = 1.0):
        super().__init__()
        self.dim, self.scale = dim, float(scale)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def distribution(self, labels, n):
        loc = self._zero.expand(n, self.dim)
        return dist.Normal(loc, torch.full_like(loc, self.scale)).to_event(1)


def register_l2_and_prior(registry) -> None:
    registry.regularizer("test_l2_means", L2Means)
    registry.prior("test_scaled_normal", ScaledNormal)


@pytest.fixture
def adata():
    data = fcrkit.simulate.basic(n_cells=300, n_genes=40, seed=0)
    fcrkit.setup_anndata(data, treatment_key="treatment", covariate_keys=["cell_type"])
    return data


# -- built-ins ----------------------------------------------------------------------------------------
def test_builtins_are_listed_with_plugin_origin_and_summary():
    records = fcrkit.list_components()
    assert all(isinstance(r, ComponentRecord) for r in records)
    by_key = {(r.kind, r.name): r for r in records}
    for (kind, name), module in BUILTINS.items():
        assert (kind, name) in by_key, f"built-in {kind} {name!r} missing"
        record = by_key[(kind, name)]
        assert record.kind == kind and record.name == name
        assert record.plugin == module
        assert record.origin == f"fcrkit {fcrkit.__version__} (built-in)"
        assert isinstance(record.summary, str) and record.summary.strip()
        assert "\n" not in record.summary  # the first line of the docstring
        assert callable(record.factory)
    # ordered by kind (encoder, prior, decoder, likelihood, regularizer, posterior, combiner, treatment encoder)
    # then name
    order = ["encoder", "prior", "decoder", "likelihood", "regularizer", "posterior", "combiner", "treatment_encoder"]
    keys = [(order.index(r.kind), r.name) for r in records]
    assert keys == sorted(keys)
    likelihoods = ["gaussian", "lognorm_gaussian", "nb", "poisson", "zinb"]
    assert [r.name for r in fcrkit.list_components("likelihood")] == likelihoods
    assert get_registry().names("prior") == ["bernoulli", "beta", "conditional_gaussian", "gaussian_mixture",
                                            "sparse_shift", "standard_normal"]


def test_unknown_component_lists_available_and_suggests():
    with pytest.raises(UnknownComponentError) as err:
        get_registry().get("likelihood", "nbb")
    message = str(err.value)
    assert "'nbb'" in message
    assert "Did you mean 'nb'?" in message
    assert "'gaussian', 'lognorm_gaussian', 'nb', 'poisson', 'zinb'" in message
    assert isinstance(err.value, LookupError)  # catchable as the built-in kind


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown component kind 'likelyhood'.*'likelihood'"):
        get_registry().get("likelyhood", "nb")


# -- a plugin registered at run time ------------------------------------------------------------------
def test_runtime_plugin_is_listed_used_in_a_spec_and_removed(adata):
    plug = make_plugin("test_l2_plugin", register_l2_and_prior)
    assert "test_l2_means" not in get_registry().names("regularizer")
    with plugin(plug, name="test_l2_plugin") as registry:
        assert isinstance(registry, Registry)
        record = get_registry().get("regularizer", "test_l2_means")
        assert record.plugin == "test_l2_plugin"
        assert record.origin == "registered for a test"
        assert record.summary == "L2 penalty on the posterior means of every latent block."
        listed = {(r.kind, r.name): r.plugin for r in fcrkit.list_components()}
        assert listed[("prior", "test_scaled_normal")] == "test_l2_plugin"
        assert_builtins(get_registry())

        def spec(weight: float | None) -> dict:
            regs = [] if weight is None else [{"name": "test_l2_means", "weight": weight}]
            return {
                "name": "l2vae",
                "blocks": [{"name": "z", "dim": 4, "prior": {"name": "test_scaled_normal", "scale": 1.5}}],
                "regularizers": regs,
            }

        penalised = fcrkit.compose(spec(100.0), adata, seed=0)
        assert isinstance(penalised.module.priors["z"], ScaledNormal)
        assert penalised.module.priors["z"].scale == 1.5  # the option reached the factory
        history = penalised.train(max_epochs=2, batch_size=128, seed=0, accelerator="cpu", lr=1e-2)
        assert history is penalised.history
        assert "test_l2_means" in penalised.history
        values = penalised.history["test_l2_means"]
        assert len(values) == 2 and all(math.isfinite(v) and v >= 0 for v in values)
        # the term enters the objective with its weight: loss = elbo + 100 * penalty (epoch means)
        for loss, elbo, term in zip(history["loss"], history["elbo"], values):
            assert loss == pytest.approx(elbo + 100.0 * term, rel=1e-4)
        plain = fcrkit.compose(spec(None), adata, seed=0)
        plain.train(max_epochs=2, batch_size=128, seed=0, accelerator="cpu", lr=1e-2)
        assert "test_l2_means" not in plain.history
        norm_penalised = float(np.mean(np.sum(penalised.get_latent_representation() ** 2, axis=1)))
        norm_plain = float(np.mean(np.sum(plain.get_latent_representation() ** 2, axis=1)))
        assert norm_penalised < 0.5 * norm_plain, (norm_penalised, norm_plain)

    # gone afterwards
    assert "test_l2_means" not in get_registry().names("regularizer")
    assert "test_scaled_normal" not in get_registry().names("prior")
    with pytest.raises(UnknownComponentError, match="test_l2_means"):
        get_registry().get("regularizer", "test_l2_means")
    with pytest.raises(UnknownComponentError, match="unknown prior 'test_scaled_normal'.*'standard_normal'"):
        fcrkit.compose(spec(1.0), adata, seed=0)
    assert_builtins(get_registry())


def test_class_instance_plugin_with_default_name():
    class AcmePlugin:
        @fcrkit.hookimpl
        def fcrkit_register_components(self, registry):
            registry.regularizer("acme_l2", L2Means, summary="custom summary")

    with plugin(AcmePlugin()):
        record = get_registry().get("regularizer", "acme_l2")
        assert record.plugin == "AcmePlugin"  # the class name when none is given
        assert record.summary == "custom summary"
    assert "acme_l2" not in get_registry().names("regularizer")


# -- the plugin contract ------------------------------------------------------------------------------
class PriorWithoutDistribution(nn.Module):
    """A prior class that forgot distribution()."""

    def __init__(self, dim, label_dims):
        super().__init__()


class EncoderWithoutForward(nn.Module):
    """An encoder class that forgot forward()."""

    def __init__(self, n_input, n_output, label_dims):
        super().__init__()


def likelihood_without_args():
    return NegativeBinomial(3)


def encoder_one_arg(n_input):
    return nn.Linear(n_input, 2)


class MisspelledHook:
    @fcrkit.hookimpl
    def fcrkit_register_component(self, registry):
        registry.regularizer("never", L2Means)


class WrongArgName:
    @fcrkit.hookimpl
    def fcrkit_register_components(self, reg):
        reg.regularizer("never", L2Means)


class NoHooks:
    def fcrkit_register_components(self, registry):  # not marked with @fcrkit.hookimpl
        registry.regularizer("never", L2Means)


CONTRACT_ERRORS = {
    "duplicate": (
        make_plugin("dup", lambda r: r.likelihood("nb", NegativeBinomial)),
        ["plugin 'bad_plugin' (registered for a test) registered likelihood 'nb'",
         f"plugin 'fcrkit.components.likelihoods' (fcrkit {fcrkit.__version__} (built-in)) "
         "already registered that name"],
    ),
    "not_callable": (
        make_plugin("nc", lambda r: r.likelihood("answer", 42)),
        ["likelihood 'answer' factory 42 is not callable", "f(n_genes, **options)"],
    ),
    "likelihood_no_args": (
        make_plugin("noargs", lambda r: r.likelihood("noargs", likelihood_without_args)),
        ["likelihood 'noargs' factory 'likelihood_without_args' cannot be called as f(n_genes, **options)",
         "too many positional arguments"],
    ),
    "encoder_one_arg": (
        make_plugin("onearg", lambda r: r.encoder("onearg", encoder_one_arg)),
        ["encoder 'onearg' factory 'encoder_one_arg' cannot be called as "
         "f(n_input, n_output, label_dims, **options)"],
    ),
    "prior_without_distribution": (
        make_plugin("nodist", lambda r: r.prior("nodist", PriorWithoutDistribution)),
        ["prior 'nodist' class PriorWithoutDistribution does not define distribution()"],
    ),
    "encoder_without_forward": (
        make_plugin("nofwd", lambda r: r.encoder("nofwd", EncoderWithoutForward)),
        ["encoder 'nofwd' class EncoderWithoutForward does not define forward()"],
    ),
    "empty_name": (
        make_plugin("noname", lambda r: r.regularizer("  ", L2Means)),
        ["registered a regularizer with an invalid name '  '"],
    ),
    "misspelled_hook": (
        MisspelledHook(),
        ["implements unknown hook(s) 'fcrkit_register_component'",
         "Did you mean 'fcrkit_register_components'?"],
    ),
    "wrong_argument_name": (
        WrongArgName(),
        ["has an invalid hook", "'reg'", "fcrkit_register_components(registry)"],
    ),
    "no_hooks": (
        NoHooks(),
        ["implements no fcrkit hook", "@fcrkit.hookimpl"],
    ),
}


@pytest.mark.parametrize("case", list(CONTRACT_ERRORS))
def test_plugin_contract_errors_name_the_plugin(case):
    obj, fragments = CONTRACT_ERRORS[case]
    with pytest.raises(PluginError) as err:
        with plugin(obj, name="bad_plugin"):
            pytest.fail("the with block must not be entered")
    message = str(err.value)
    assert "'bad_plugin'" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    # the registry is as before: built-ins there, nothing of the bad plugin
    registry = get_registry()
    assert_builtins(registry)
    assert not [r for r in registry.records() if r.plugin == "bad_plugin"]
    assert "never" not in registry.names("regularizer")
    # and the plugin name is free again
    good = make_plugin("good", lambda r: r.regularizer("test_after_failure", L2Means))
    with plugin(good, name="bad_plugin"):
        assert get_registry().get("regularizer", "test_after_failure").plugin == "bad_plugin"
    assert "test_after_failure" not in get_registry().names("regularizer")


def test_same_plugin_object_twice_is_a_plugin_error():
    good = make_plugin("twice", lambda r: r.regularizer("test_twice", L2Means))
    with plugin(good, name="first_name"):
        with pytest.raises(PluginError, match="'second_name'.*already registered"):
            fcrkit.registry.register_plugin(good, name="second_name")
        with pytest.raises(PluginError, match="'first_name'.*a plugin of that name is already registered"):
            fcrkit.registry.register_plugin(make_plugin("x", lambda r: None), name="first_name")
        assert get_registry().get("regularizer", "test_twice").plugin == "first_name"
    assert "test_twice" not in get_registry().names("regularizer")


def test_build_with_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        get_registry().build("encoder", "mlp", 10, 3, {}, n_hiden=3)
    message = str(err.value)
    assert "encoder 'mlp'" in message
    assert "'n_hiden'" in message
    assert "Did you mean 'n_hidden'?" in message
    assert "'activation', 'dropout', 'min_scale', 'n_hidden', 'n_layers', 'norm'" in message
    # a correct call builds the component
    encoder = get_registry().build("encoder", "mlp", 10, 3, {}, n_hidden=8)
    loc, scale = encoder(torch.zeros(5, 10), {})
    assert loc.shape == scale.shape == (5, 3) and bool((scale > 0).all())


def plain_object_likelihood(n_genes):
    """A likelihood factory that returns the wrong thing."""
    return object()


class Nothing:
    """A regulariser without loss or handler."""

    def __init__(self, info):
        pass


def make_nothing(info):
    """A regulariser factory returning an object with neither loss nor handler."""
    return Nothing(info)


def test_factory_breaking_the_protocol_fails_at_build_naming_the_plugin(adata):
    def register(registry):
        registry.likelihood("test_plain", plain_object_likelihood)
        registry.regularizer("test_nothing", make_nothing)  # a function factory: only checkable once built

    with plugin(make_plugin("protocol_breaker", register), name="protocol_breaker"):
        registry = get_registry()
        with pytest.raises(PluginError) as err:
            registry.build("likelihood", "test_plain", 10)
        message = str(err.value)
        assert "likelihood 'test_plain' from plugin 'protocol_breaker' (registered for a test)" in message
        assert "not a torch.nn.Module" in message
        assert "no distribution(params, library) method" in message

        info = fcrkit.protocols.ModelInfo({"z": 2}, {}, 10)
        with pytest.raises(PluginError, match=r"regularizer 'test_nothing' from plugin 'protocol_breaker'.*"
                                              r"neither a loss\(ctx\) nor a handler\(weight\)"):
            registry.build("regularizer", "test_nothing", info)

        spec = {"name": "broken", "blocks": [{"name": "z", "dim": 2}], "likelihood": "test_plain"}
        with pytest.raises(PluginError, match="protocol_breaker"):
            fcrkit.compose(spec, adata)


# -- a hook that raises -------------------------------------------------------------------------------
def test_hook_raising_is_recorded_with_a_warning_and_builtins_still_load():
    def register(registry):
        registry.regularizer("test_half_registered", L2Means)
        raise RuntimeError("boom in the plugin")

    with pytest.warns(PluginLoadWarning, match="'exploding'.*boom in the plugin"):
        ctx = plugin(make_plugin("exploding", register), name="exploding")
        registry = ctx.__enter__()
    try:
        assert_builtins(registry)
        failures = {f.plugin: f for f in registry.failures}
        assert "exploding" in failures
        assert failures["exploding"].error == "hook raised RuntimeError: boom in the plugin"
        assert failures["exploding"].origin == "registered for a test"
        # a failed plugin contributes nothing, not even what it registered before raising
        assert "test_half_registered" not in registry.names("regularizer")
    finally:
        ctx.__exit__(None, None, None)
    assert not [f for f in get_registry().failures if f.plugin == "exploding"]


# -- entry points -------------------------------------------------------------------------------------
class FakeDist:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version


class FakeEntryPoint:
    """What importlib.metadata.entry_points() yields, without installing anything."""

    def __init__(self, name: str, target: Any, dist_name: str = "acme-fcrkit", version: str = "1.2.3"):
        self.name, self.value = name, f"{dist_name.replace('-', '_')}.plugin"
        self.dist = FakeDist(dist_name, version)
        self._target = target
        self.loads = 0

    def load(self):
        self.loads += 1
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


@pytest.fixture
def fake_entry_points():
    """Install fake entry points (with autoloading enabled); reload the real registry afterwards."""
    calls: list[str] = []

    def install(mp: pytest.MonkeyPatch, eps: list[FakeEntryPoint]) -> None:
        def entry_points(*, group):
            calls.append(group)
            return list(eps)

        mp.setattr(registry_module, "entry_points", entry_points)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FCRKIT_DISABLE_PLUGINS", raising=False)
        yield mp, install, calls
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)  # the restored registry is clean
        restored = reload_plugins()
    assert_builtins(restored)
    assert restored.failures == []
    assert "acme_l2" not in restored.names("regularizer")


def good_acme_plugin() -> types.ModuleType:
    return make_plugin("acme_fcrkit.plugin", lambda r: r.regularizer("acme_l2", L2Means))


def test_entry_points_good_and_broken(fake_entry_points, capsys):
    mp, install, calls = fake_entry_points
    good = FakeEntryPoint("acme", good_acme_plugin())
    broken = FakeEntryPoint("broken_plugin", ImportError("No module named 'missing_dep'"),
                            dist_name="broken-dist", version="0.0.1")
    install(mp, [good, broken])

    with pytest.warns(PluginLoadWarning) as record:
        registry = reload_plugins()
    messages = [str(w.message) for w in record if issubclass(w.category, PluginLoadWarning)]
    assert any("'broken_plugin' (broken-dist 0.0.1) was not loaded" in m and "missing_dep" in m
               and "FCRKIT_DISABLE_PLUGINS=1" in m for m in messages), messages
    assert not any("'acme'" in m for m in messages)
    assert calls == ["fcrkit"]
    assert good.loads == 1 and broken.loads == 1

    record_ = registry.get("regularizer", "acme_l2")
    assert record_.plugin == "acme"
    assert record_.origin == "acme-fcrkit 1.2.3"
    assert_builtins(registry)
    assert get_registry() is registry

    assert len(registry.failures) == 1
    failure = registry.failures[0]
    assert failure.plugin == "broken_plugin"
    assert failure.origin == "broken-dist 0.0.1"
    assert failure.error == "import failed: ImportError: No module named 'missing_dep'"

    assert fcrkit.cli.main(["components"]) == 0
    out = capsys.readouterr().out
    acme_rows = [line for line in out.splitlines() if line.split()[:2] == ["regularizer", "acme_l2"]]
    assert len(acme_rows) == 1 and "acme-fcrkit 1.2.3" in acme_rows[0] and " acme " in acme_rows[0]
    assert "Plugins that failed to load:" in out
    failed_part = out.split("Plugins that failed to load:")[1]
    failed_rows = [line for line in failed_part.splitlines() if line.startswith("broken_plugin")]
    assert len(failed_rows) == 1
    assert "broken-dist 0.0.1" in failed_rows[0]
    assert "import failed: ImportError: No module named 'missing_dep'" in failed_rows[0]


def test_entry_point_breaking_the_contract_is_recorded_not_fatal(fake_entry_points, capsys):
    mp, install, _ = fake_entry_points
    misspelled = types.ModuleType("typo_plugin")

    @fcrkit.hookimpl
    def fcrkit_register_component(registry):
        registry.regularizer("never", L2Means)

    misspelled.fcrkit_register_component = fcrkit_register_component
    duplicate = make_plugin("dup_plugin", lambda r: (r.regularizer("dup_extra", L2Means),
                                                      r.likelihood("nb", NegativeBinomial)))
    eps = [FakeEntryPoint("typo", misspelled, "typo-dist", "1.0"),
           FakeEntryPoint("dup", duplicate, "dup-dist", "2.0"),
           FakeEntryPoint("wrongarg", WrongArgName(), "wrongarg-dist", "3.0"),
           FakeEntryPoint("acme", good_acme_plugin())]
    install(mp, eps)

    with pytest.warns(PluginLoadWarning) as record:
        registry = reload_plugins()
    messages = " | ".join(str(w.message) for w in record)
    assert "'typo' (typo-dist 1.0)" in messages and "Did you mean 'fcrkit_register_components'?" in messages
    assert "'dup' (dup-dist 2.0)" in messages and "already registered that name" in messages

    assert_builtins(registry)  # 'nb' still belongs to the built-in module
    assert registry.get("regularizer", "acme_l2").origin == "acme-fcrkit 1.2.3"
    assert "dup_extra" not in registry.names("regularizer")  # the failed plugin contributes nothing
    assert "never" not in registry.names("regularizer")
    failures = {f.plugin: f for f in registry.failures}
    assert set(failures) == {"typo", "dup", "wrongarg"}
    assert "has an invalid hook" in failures["wrongarg"].error and "'reg'" in failures["wrongarg"].error
    assert failures["typo"].origin == "typo-dist 1.0"
    assert "unknown hook(s) 'fcrkit_register_component'" in failures["typo"].error
    assert failures["dup"].origin == "dup-dist 2.0"
    assert "registered likelihood 'nb'" in failures["dup"].error

    # `fcrkit components` shows each failure on one line of its table, even a multi-line error
    assert fcrkit.cli.main(["components"]) == 0
    failed_part = capsys.readouterr().out.split("Plugins that failed to load:")[1].strip().splitlines()
    assert failed_part[0].split() == ["plugin", "from", "error"]
    body = failed_part[2:]
    assert sorted(line.split()[0] for line in body) == ["dup", "typo", "wrongarg"]
    wrongarg = next(line for line in body if line.startswith("wrongarg"))
    assert "wrongarg-dist 3.0" in wrongarg and "has an invalid hook" in wrongarg and "'reg'" in wrongarg


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_disable_env_skips_entry_points_but_not_builtins(fake_entry_points, value):
    mp, install, calls = fake_entry_points
    good = FakeEntryPoint("acme", good_acme_plugin())
    broken = FakeEntryPoint("broken_plugin", ImportError("nope"))
    install(mp, [good, broken])
    mp.setenv("FCRKIT_DISABLE_PLUGINS", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        registry = reload_plugins()
    assert calls == [] and good.loads == 0 and broken.loads == 0
    assert_builtins(registry)
    assert "acme_l2" not in registry.names("regularizer")
    assert registry.failures == []


def test_regularizer_class_without_loss_or_handler_is_refused_at_registration():
    class Inert:
        def __init__(self, info):
            pass

    class Bad:
        @fcrkit.hookimpl
        def fcrkit_register_components(self, registry):
            registry.regularizer("inert", Inert)

    with pytest.raises(PluginError, match=r"'bad-reg'.*'inert'.*neither loss\(ctx\) nor handler"):
        with fcrkit.registry.plugin(Bad(), name="bad-reg"):
            pass
    assert "inert" not in fcrkit.get_registry().names("regularizer")
