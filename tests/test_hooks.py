"""Every hook is tested and documented; the plugin guide's examples work; the test helpers catch faults.

``HOOK_TESTS`` maps each hook of :mod:`fcrkit.hookspecs` to its test: adding a hook without a test
here, or without a section in ``docs/plugins.md``, fails :func:`test_every_hook_is_tested_and_documented`.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import fcrkit
from fcrkit import hookspecs
from fcrkit.protocols import KINDS
from fcrkit.registry import get_registry
from fcrkit.testing import ConformanceError, check_component, tiny_adata

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def guide_examples() -> dict[str, type]:
    """The minimal example of each kind in the guide (its '### Encoder' ... sections), executed."""
    text = GUIDE.read_text()
    examples = {}
    for kind in KINDS:
        heading = kind.replace("_", " ").capitalize()  # "treatment_encoder": "### Treatment encoder"
        section = re.search(rf"^### {heading}\n(.*?)(?=^##)", text, re.DOTALL | re.MULTILINE)
        assert section, f"docs/plugins.md has no '### {heading}' section"
        code = re.search(r"```python\n(.*?)```", section.group(1), re.DOTALL)
        assert code, f"the {kind} section of docs/plugins.md has no python example"
        namespace: dict = {}
        exec(compile(code.group(1), f"docs/plugins.md ({kind})", "exec"), namespace)
        defined = [v for v in namespace.values() if inspect.isclass(v) and f"class {v.__name__}" in code.group(1)]
        assert len(defined) == 1, f"the {kind} example should define one class, found {defined}"
        examples[kind] = defined[0]
    return examples


# -- fcrkit_register_components ------------------------------------------------------------------------
def test_register_components_hook(fcrkit_plugin):
    """A plugin registering one component of every kind (the guide's examples) through the hook."""
    examples = guide_examples()
    plugin = types.ModuleType("guide_plugin")

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        for kind, factory in examples.items():
            getattr(registry, kind)(f"guide_{kind}", factory)

    plugin.fcrkit_register_components = fcrkit_register_components
    registry = fcrkit_plugin(plugin)
    for kind, factory in examples.items():
        record = registry.get(kind, f"guide_{kind}")
        assert record.plugin == "guide_plugin" and record.factory is factory
        assert record.summary == inspect.getdoc(factory).splitlines()[0]
        check_component(kind, f"guide_{kind}")

    # the parts compose into a model that trains, and the regulariser's term is in the history
    spec = {
        "name": "guide",
        "blocks": [{"name": "z", "dim": 3, "encoder": "guide_encoder", "prior": "guide_prior"}],
        "decoder": "guide_decoder",
        "likelihood": "guide_likelihood",
        "regularizers": [{"name": "guide_regularizer", "weight": 0.1, "block": "z"}],
    }
    model = fcrkit.compose(spec, tiny_adata(), seed=0)
    history = model.train(max_epochs=3, batch_size=128, seed=0, accelerator="cpu", elbo="trace")
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["guide_regularizer"]) == 3
    assert get_registry().get("likelihood", "guide_likelihood").plugin == "guide_plugin"


# -- fcrkit_register_recipes ---------------------------------------------------------------------------
def guide_recipe_plugin() -> types.ModuleType:
    """The plugin of the guide's ``fcrkit_register_recipes`` section, executed as a module."""
    text = GUIDE.read_text()
    section = re.search(r"^### `fcrkit_register_recipes`\n(.*?)(?=^##)", text, re.DOTALL | re.MULTILINE)
    assert section, "docs/plugins.md has no fcrkit_register_recipes section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.DOTALL)
    assert code, "the fcrkit_register_recipes section of docs/plugins.md has no python example"
    plugin = types.ModuleType("guide_recipes")
    plugin.fcrkit = fcrkit
    exec(compile(code.group(1), "docs/plugins.md (recipes)", "exec"), plugin.__dict__)
    return plugin


def test_register_recipes_hook(fcrkit_plugin, tmp_path):
    """A plugin's recipe (the guide's example) is registered, named by a run config, trained, saved and loaded."""
    from fcrkit.runconfig import RunConfig, recipes

    plugin = guide_recipe_plugin()
    assert "SmallVAE" not in recipes() and "FCR" in recipes()  # the built-ins come through the same hook
    assert get_registry().get_recipe("FCR").plugin == "fcrkit.models.builtin"
    registry = fcrkit_plugin(plugin)
    record = registry.get_recipe("SmallVAE")
    assert record.plugin == "guide_recipes" and record.factory is plugin.SmallVAE
    assert recipes()["SmallVAE"] is plugin.SmallVAE

    adata = tiny_adata()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    config = RunConfig.from_dict({"data": {"path": str(path), "treatment_key": "treatment"},
                                  "model": {"recipe": "smallvae", "n_latent": 3, "seed": 0},
                                  "output": {"dir": str(tmp_path / "run")}})
    assert config.recipe == "SmallVAE" and config.spec.block_dims == {"z": 3}
    model = config.build_model(adata)
    assert isinstance(model, plugin.SmallVAE)
    history = model.train(max_epochs=3, batch_size=128, seed=0, accelerator="cpu")
    assert history["loss"][-1] < history["loss"][0]
    model.save(tmp_path / "model")
    again = plugin.SmallVAE.load(tmp_path / "model", adata)
    assert (again.get_latent_representation() == model.get_latent_representation()).all()

    with pytest.raises(fcrkit.errors.ConfigError, match="n_hiden.*Did you mean 'n_hidden'"):
        RunConfig.from_dict({"data": {"path": str(path)}, "model": {"recipe": "SmallVAE", "n_hiden": 3},
                             "output": {"dir": str(tmp_path / "run")}})


def test_recipe_registration_errors_name_the_plugin(fcrkit_registry):
    """A class without the recipe surface, a non-class or a taken name is refused, naming the plugin."""
    from fcrkit.errors import PluginError, UnknownComponentError

    class NotARecipe:
        def train(self):
            return None

    for cls, problem in ((NotARecipe, "has no 'build_spec'"), (len, "not a class"),
                         (fcrkit.models.SCVI, "already registered")):
        plugin = types.SimpleNamespace()

        @fcrkit.hookimpl
        def fcrkit_register_recipes(registry, cls=cls, name="SCVI" if problem == "already registered" else "Mine"):
            registry.recipe(name, cls)

        plugin.fcrkit_register_recipes = fcrkit_register_recipes
        with pytest.raises(PluginError, match=problem) as excinfo:
            fcrkit.registry.register_plugin(plugin, "bad_recipes")
        assert "plugin 'bad_recipes'" in str(excinfo.value)
        assert "bad_recipes" not in fcrkit.registry._state().origins  # left as it was
    with pytest.raises(UnknownComponentError, match="unknown recipe 'SCV'.*Did you mean 'SCVI'"):
        get_registry().get_recipe("SCV")


HOOK_TESTS = {"fcrkit_register_components": test_register_components_hook,
              "fcrkit_register_recipes": test_register_recipes_hook}


def test_every_hook_is_tested_and_documented():
    hooks = {name for name, f in vars(hookspecs).items()
             if callable(f) and hasattr(f, "fcrkit_spec")}  # pluggy marks specs with <project>_spec
    assert hooks, "no hook specifications found in fcrkit.hookspecs"
    assert hooks == set(HOOK_TESTS), f"hooks without a test in HOOK_TESTS: {sorted(hooks - set(HOOK_TESTS))}"
    guide = GUIDE.read_text()
    for hook in sorted(hooks):
        doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
        assert "Example" in doc, f"hook {hook} has no docstring with an example"
        assert f"### `{hook}`" in guide, f"hook {hook} has no section in docs/plugins.md"


# -- the conformance check catches what it claims to ---------------------------------------------------------
class NegativeScaleEncoder(nn.Module):
    def __init__(self, n_input, n_output, label_dims):
        super().__init__()
        self.net = nn.Linear(n_input, n_output)

    def forward(self, y, labels):
        loc = self.net(y)
        return loc, loc  # half the scales are negative


class WrongShapeEncoder(NegativeScaleEncoder):
    def forward(self, y, labels):
        loc = self.net(y)
        return loc[:, :1], loc.exp()[:, :1]


class NoEventPrior(nn.Module):
    def __init__(self, dim, label_dims):
        super().__init__()
        self.dim = dim

    def distribution(self, labels, n):
        import pyro.distributions as dist

        return dist.Normal(torch.zeros(n, self.dim), 1.0)  # forgot .to_event(1)


class MissingHeadDecoder(nn.Module):
    def __init__(self, n_input, n_output, heads, label_dims):
        super().__init__()
        self.net = nn.Linear(n_input, n_output)

    def forward(self, z, labels):
        return {"mean": self.net(z)}  # ignores the "gate" head


class ConstantPenalty:
    def __init__(self, info):
        pass

    def loss(self, ctx):
        return torch.tensor(1.0)


class NanPenalty:
    def __init__(self, info):
        pass

    def loss(self, ctx):
        return ctx.loc["x"].sum() * float("nan")


class BadSignature:
    def __init__(self):  # takes no info
        pass

    def loss(self, ctx):
        return ctx.loc["x"].sum()


@pytest.mark.parametrize(("kind", "factory", "problem"), [
    ("encoder", NegativeScaleEncoder, "strictly positive"),
    ("encoder", WrongShapeEncoder, "has shape (16, 1), expected (16, 4)"),
    ("prior", NoEventPrior, "use .to_event(1)"),
    ("decoder", MissingHeadDecoder, "expected a dict with the heads ['mean', 'gate']"),
    ("regularizer", ConstantPenalty, "does not depend on anything trainable"),
    ("regularizer", NanPenalty, "NaN or infinite"),
    ("regularizer", BadSignature, "cannot be called as f(info, **options)"),
], ids=lambda v: v.__name__ if inspect.isclass(v) else None)
def test_conformance_check_names_the_problem(kind, factory, problem):
    with pytest.raises(ConformanceError) as excinfo:
        check_component(kind, factory)
    assert problem in str(excinfo.value)


@pytest.mark.parametrize("record", get_registry().records(), ids=lambda r: f"{r.kind}:{r.name}")
def test_every_builtin_component_passes_the_conformance_check(record):
    settings = {  # components that need a particular model around them
        "standard_normal": {"label_dims": {}},
        "gaussian_mixture": {"label_dims": {}},
        "masked": {"options": {"block": "x"}},
        "sparse_additive": {"options": {"basal": "x"}},
        "sparse_shift": {"label_dims": {"t": 3}},
        "adversarial_classifier": {"block_dims": {"basal": 3}},
        "mask_sparsity": {"global_dims": {"mask": 3}},
        "bernoulli": {"label_dims": {}},
        "beta": {"label_dims": {}},
        "basal_mlp": {"label_dims": {"t": 3, "embedding": 4, "mask": 4},
                      "options": {"embedding": "embedding", "mask": "mask"}},
    }
    assert check_component(record.kind, record.name, **settings.get(record.name, {})) is not None


def test_registry_fixture_isolates_registrations(fcrkit_registry):
    plugin = types.SimpleNamespace()

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        registry.regularizer("only_in_this_test", NanPenalty)

    plugin.fcrkit_register_components = fcrkit_register_components
    with fcrkit.registry.plugin(plugin, "isolation_probe") as registry:
        assert "only_in_this_test" in registry.names("regularizer")
    assert "only_in_this_test" not in get_registry().names("regularizer")
