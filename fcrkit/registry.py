"""The component registry: a pluggy PluginManager behind a small typed facade.

fcrkit's own components live in default plugins (the modules of :mod:`fcrkit.components`) that
register through the same ``fcrkit_register_components`` hook as third-party plugins, which are
found through the ``fcrkit`` entry-point group. Set ``FCRKIT_DISABLE_PLUGINS=1`` to skip the entry
points (the built-ins still load).

Whole models (recipes) are registered the same way, through the ``fcrkit_register_recipes`` hook;
fcrkit's own recipes come from the default plugin :mod:`fcrkit.models.builtin`.

Use :func:`get_registry` to look components up and :func:`list_components` to see what is there.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy
from torch import nn

from fcrkit import hookspecs
from fcrkit.errors import ConfigError, PluginError, UnknownComponentError, did_you_mean, listing
from fcrkit.protocols import CLASS_METHODS, FACTORY_ARGS, KINDS, instance_problems

ENTRY_POINT_GROUP = "fcrkit"
DISABLE_ENV = "FCRKIT_DISABLE_PLUGINS"
BUILTIN_PLUGINS: tuple[str, ...] = tuple(
    f"fcrkit.components.{kind}s"
    for kind in ("encoder", "prior", "decoder", "likelihood", "regularizer", "posterior", "combiner")
) + ("fcrkit.components.structure", "fcrkit.components.independence", "fcrkit.components.sparse_shift",
     "fcrkit.components.cpa", "fcrkit.components.counterfactual", "fcrkit.components.mixture",
     "fcrkit.components.treatments")
#: The default plugin that registers fcrkit's own recipes (through ``fcrkit_register_recipes``).
BUILTIN_RECIPES = "fcrkit.models.builtin"
#: Methods a registered recipe class must have (the surface every recipe shares).
RECIPE_METHODS: tuple[str, ...] = ("build_spec", "train", "get_latent_representation", "predict", "save", "load")


def builtin_origin() -> str:
    """The origin shown for fcrkit's own components: ``"fcrkit <version> (built-in)"``."""
    # imported at call time: this module is itself imported while fcrkit initialises
    from fcrkit import __version__

    return f"fcrkit {__version__} (built-in)"


class PluginLoadWarning(UserWarning):
    """A third-party plugin could not be loaded; everything else still is."""


@dataclass(frozen=True)
class ComponentRecord:
    """One registered component: what ``fcrkit components`` prints a row of."""

    kind: str
    name: str
    plugin: str
    summary: str
    factory: Callable[..., Any]
    origin: str = ""  # the distribution and version that provided the plugin


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to import or to run its hook."""

    plugin: str
    origin: str
    error: str


def _summary(factory: Callable[..., Any]) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return None


def _options(sig: inspect.Signature, kind: str) -> list[str]:
    """Names of the options a factory takes after its protocol arguments."""
    skip = len(FACTORY_ARGS[kind])
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [p.name for p in params[skip:]]


class Registry:
    """Typed facade over the registered components.

    Plugins add components with :meth:`encoder`, :meth:`prior`, :meth:`decoder`,
    :meth:`likelihood`, :meth:`regularizer`, :meth:`posterior`, :meth:`combiner` and
    :meth:`treatment_encoder`; fcrkit looks them up with :meth:`get` and builds them with :meth:`build`.
    Whole models are added with :meth:`recipe` and looked up with :meth:`get_recipe` and :meth:`recipes`.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], ComponentRecord] = {}
        self._recipes: dict[str, ComponentRecord] = {}
        self._plugin: tuple[str, str] | None = None  # (plugin name, origin) while its hook runs
        self.failures: list[PluginFailure] = []

    # -- registration (called by plugins from their hook) -------------------------------------
    def encoder(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register an encoder factory ``f(n_input, n_output, label_dims, **options)``."""
        self._add("encoder", name, factory, summary)

    def prior(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register a prior factory ``f(dim, label_dims, **options)``."""
        self._add("prior", name, factory, summary)

    def decoder(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register a decoder factory ``f(n_input, n_output, heads, label_dims, **options)``."""
        self._add("decoder", name, factory, summary)

    def likelihood(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register a likelihood factory ``f(n_genes, **options)``."""
        self._add("likelihood", name, factory, summary)

    def regularizer(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register a regulariser factory ``f(info, **options)``."""
        self._add("regularizer", name, factory, summary)

    def posterior(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register a posterior family factory ``f(dim, **options)``."""
        self._add("posterior", name, factory, summary)

    def combiner(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register a combiner factory ``f(block_dims, label_dims, **options)``."""
        self._add("combiner", name, factory, summary)

    def treatment_encoder(self, name: str, factory: Callable[..., Any], summary: str | None = None) -> None:
        """Register a treatment encoder factory ``f(features, **options)`` (see :mod:`fcrkit.components.treatments`)."""
        self._add("treatment_encoder", name, factory, summary)

    def recipe(self, name: str, cls: type, summary: str | None = None) -> None:
        """Register a recipe: a :class:`fcrkit.models.Recipe` subclass, called ``cls(adata, **arguments)``.

        The name is what a run config's ``[model] recipe = ...`` and a benchmark's ``[recipes]`` use.
        """
        where = self._where()
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"{where} registered a recipe with an invalid name {name!r}: use a non-empty string.")
        existing = self._recipes.get(name)
        if existing is not None:
            raise PluginError(f"{where} registered recipe {name!r}, but plugin {existing.plugin!r} "
                              f"({existing.origin}) already registered that name. Choose another name.")
        if not inspect.isclass(cls):
            raise PluginError(f"{where}: recipe {name!r} is {cls!r}, not a class; register a subclass of "
                              "fcrkit.models.Recipe.")
        lacking = [m for m in RECIPE_METHODS if not callable(getattr(cls, m, None))]
        if lacking:
            raise PluginError(f"{where}: recipe {name!r} class {cls.__name__} has no {listing(lacking)}; register a "
                              "subclass of fcrkit.models.Recipe (its build_spec writes the model's spec).")
        plugin, origin = self._plugin or ("(direct call)", "")
        self._recipes[name] = ComponentRecord("recipe", name, plugin, summary if summary is not None else _summary(cls),
                                              cls, origin)

    def _where(self) -> str:
        plugin, origin = self._plugin or ("(direct call)", "")
        return f"plugin {plugin!r}" + (f" ({origin})" if origin else "")

    def _add(self, kind: str, name: str, factory: Callable[..., Any], summary: str | None) -> None:
        plugin, origin = self._plugin or ("(direct call)", "")
        where = self._where()
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"{where} registered a {kind} with an invalid name {name!r}: use a non-empty string.")
        existing = self._records.get((kind, name))
        if existing is not None:
            raise PluginError(
                f"{where} registered {kind} {name!r}, but plugin {existing.plugin!r} "
                f"({existing.origin}) already registered that name. Choose another name "
                "(a prefix with your package name avoids clashes)."
            )
        self._check_factory(kind, name, factory, where)
        self._records[(kind, name)] = ComponentRecord(
            kind, name, plugin, summary if summary is not None else _summary(factory), factory, origin
        )

    @staticmethod
    def _check_factory(kind: str, name: str, factory: Callable[..., Any], where: str) -> None:
        args = FACTORY_ARGS[kind]
        call = f"f({', '.join(args)}, **options)"
        if not callable(factory):
            raise PluginError(f"{where}: {kind} {name!r} factory {factory!r} is not callable; it must be {call}.")
        sig = _signature(factory)
        if sig is not None:
            try:
                sig.bind_partial(*args)
            except TypeError as err:
                raise PluginError(
                    f"{where}: {kind} {name!r} factory {getattr(factory, '__name__', factory)!r} cannot be "
                    f"called as {call} ({err}). See fcrkit.protocols for the {kind} protocol."
                ) from None
        if inspect.isclass(factory):
            if kind == "regularizer" and not any(callable(getattr(factory, m, None)) for m in ("loss", "handler")):
                raise PluginError(f"{where}: regularizer {name!r} class {factory.__name__} defines neither "
                                  "loss(ctx) nor handler(weight); see fcrkit.protocols.Regularizer.")
            for method in CLASS_METHODS[kind]:
                own = getattr(factory, method, None)
                if not callable(own) or (method == "forward" and own is nn.Module.forward):
                    raise PluginError(
                        f"{where}: {kind} {name!r} class {factory.__name__} does not define {method}(); "
                        f"see fcrkit.protocols for the {kind} protocol."
                    )

    # -- lookup ---------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Sorted names of the registered components of ``kind``."""
        self._check_kind(kind)
        return sorted(name for k, name in self._records if k == kind)

    def get(self, kind: str, name: str) -> ComponentRecord:
        """The record of component ``name`` of ``kind``; unknown names list the available ones."""
        self._check_kind(kind)
        record = self._records.get((kind, name))
        if record is None:
            available = self.names(kind)
            raise UnknownComponentError(
                f"unknown {kind} {name!r}.{did_you_mean(name, available)} Available {kind}s: "
                f"{listing(available)}. Plugins add more; see `fcrkit components`."
            )
        return record

    def takes_option(self, kind: str, name: str, option: str) -> bool:
        """Whether component ``name``'s factory takes the keyword argument ``option``.

        fcrkit asks this of :data:`fcrkit.protocols.TREATMENT_FEATURES`: a factory that takes it is
        given the treatments' feature matrix (see :mod:`fcrkit.protocols`).
        """
        sig = _signature(self.get(kind, name).factory)
        return sig is not None and option in _options(sig, kind)

    def build(self, kind: str, name: str, *args: Any, **options: Any) -> Any:
        """Call component ``name``'s factory with the protocol ``args`` and the spec's ``options``.

        Options the factory does not take are a :class:`ConfigError` listing those it does; an
        object that does not honour the protocol is a :class:`PluginError` naming its plugin.
        """
        record = self.get(kind, name)
        sig = _signature(record.factory)
        if sig is not None:
            try:
                sig.bind(*args, **options)
            except TypeError as err:
                accepted = _options(sig, kind)
                unknown = [o for o in options if o not in sig.parameters]
                hint = "".join(did_you_mean(o, accepted) for o in unknown)
                raise ConfigError(
                    f"{kind} {name!r}: {err}.{hint} Options it accepts: {listing(accepted)}."
                ) from None
        obj = record.factory(*args, **options)
        problems = instance_problems(kind, obj)
        if problems:
            raise PluginError(
                f"{kind} {name!r} from plugin {record.plugin!r} ({record.origin}) does not honour the "
                f"{kind} protocol: {'; '.join(problems)}. See fcrkit.protocols."
            )
        return obj

    def get_recipe(self, name: str) -> ComponentRecord:
        """The record of recipe ``name`` (its class is ``.factory``); unknown names list the registered ones."""
        record = self._recipes.get(name)
        if record is None:
            available = sorted(self._recipes)
            raise UnknownComponentError(f"unknown recipe {name!r}.{did_you_mean(name, available)} Available recipes: "
                                        f"{listing(available)}. Plugins add more; see "
                                        "`fcrkit components --kind recipe`.")
        return record

    def recipes(self) -> dict[str, type]:
        """Every registered recipe class by name, sorted by name."""
        return {name: self._recipes[name].factory for name in sorted(self._recipes)}

    def recipe_records(self) -> list[ComponentRecord]:
        """The records of the registered recipes, sorted by name."""
        return [self._recipes[name] for name in sorted(self._recipes)]

    def records(self, kind: str | None = None) -> list[ComponentRecord]:
        """All records (of one ``kind`` if given), ordered by kind then name."""
        if kind is not None:
            self._check_kind(kind)
        order = {k: i for i, k in enumerate(KINDS)}
        chosen = [r for r in self._records.values() if kind is None or r.kind == kind]
        return sorted(chosen, key=lambda r: (order[r.kind], r.name))

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown component kind {kind!r}; kinds are {listing(KINDS)}.")

    @contextmanager
    def _registering_as(self, plugin: str, origin: str) -> Iterator[None]:
        self._plugin = (plugin, origin)
        try:
            yield
        finally:
            self._plugin = None


# -- the plugin manager -------------------------------------------------------------------------
class _Plugins:
    """The PluginManager, what was loaded into it, and the registry built from it."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        self.failures: list[PluginFailure] = []
        self.third_party: set[str] = set()  # plugins from entry points: their errors are recorded, not raised
        self._registry: Registry | None = None
        for module_name in (*BUILTIN_PLUGINS, BUILTIN_RECIPES):
            self.add(importlib.import_module(module_name), module_name, builtin_origin())
        if os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes", "on"):
            self._load_entry_points()

    def add(self, plugin: object, name: str, origin: str) -> None:
        """Register ``plugin`` under ``name``, checking its hooks; the registry is rebuilt lazily."""
        where = f"plugin {name!r} ({origin})"
        if self.pm.has_plugin(name):
            raise PluginError(f"{where}: a plugin of that name is already registered.")
        try:
            self.pm.register(plugin, name)
        except pluggy.PluginValidationError as err:
            raise PluginError(f"{where} has an invalid hook: {err}. Hook arguments must match "
                              "fcrkit.hookspecs (fcrkit_register_components(registry), "
                              "fcrkit_register_recipes(registry)).") from None
        except ValueError as err:  # pluggy: this object is already registered under another name
            raise PluginError(f"{where}: {err}.") from None
        known = [n for n in dir(hookspecs) if n.startswith("fcrkit_")]
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = [c.name for c in callers if c.spec is None]
        if unknown or not callers:
            self.pm.unregister(plugin)
            if unknown:
                hint = "".join(did_you_mean(u, known) for u in unknown)
                raise PluginError(f"{where} implements unknown hook(s) {listing(unknown)}.{hint} "
                                  f"fcrkit's hooks are {listing(known)}.")
            raise PluginError(f"{where} implements no fcrkit hook: mark its "
                              "fcrkit_register_components(registry) (or fcrkit_register_recipes(registry)) "
                              "function with @fcrkit.hookimpl.")
        self.origins[name] = origin
        self._registry = None

    def remove(self, name: str) -> None:
        """Unregister plugin ``name`` (a no-op if absent)."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
            self.origins.pop(name, None)
            self._registry = None

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
            try:
                plugin = ep.load()
            except Exception as err:  # a broken plugin must not take the others down
                self._fail(ep.name, origin, f"import failed: {type(err).__name__}: {err}")
                continue
            try:
                self.add(plugin, ep.name, origin)
            except PluginError as err:  # a contract error must not take the others down either
                self._fail(ep.name, origin, str(err))
                continue
            self.third_party.add(ep.name)

    def _fail(self, plugin: str, origin: str, error: str) -> None:
        self.failures.append(PluginFailure(plugin, origin, error))
        warnings.warn(f"fcrkit plugin {plugin!r} ({origin}) was not loaded: {error}. "
                      f"Set {DISABLE_ENV}=1 to skip third-party plugins.", PluginLoadWarning, stacklevel=3)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build()
        return self._registry

    def _build(self) -> Registry:
        registry = Registry()
        failures = list(self.failures)
        failed: set[str] = set()
        hooks = (self.pm.hook.fcrkit_register_components, self.pm.hook.fcrkit_register_recipes)
        # components first, then recipes, each in registration order
        for impl in (impl for hook in hooks for impl in hook.get_hookimpls()):
            if impl.plugin_name in failed:  # its other hook failed: it contributes nothing
                continue
            origin = self.origins.get(impl.plugin_name, "")
            with registry._registering_as(impl.plugin_name, origin):
                try:
                    impl.function(registry=registry)
                except Exception as err:  # its own code raised: report it and go on without it
                    if isinstance(err, PluginError) and impl.plugin_name not in self.third_party:
                        raise
                    error = str(err) if isinstance(err, PluginError) else f"hook raised {type(err).__name__}: {err}"
                    failures.append(PluginFailure(impl.plugin_name, origin, error))
                    failed.add(impl.plugin_name)
                    # drop what it registered before failing: a failed plugin contributes nothing
                    registry._records = {k: r for k, r in registry._records.items() if r.plugin != impl.plugin_name}
                    registry._recipes = {k: r for k, r in registry._recipes.items() if r.plugin != impl.plugin_name}
                    warnings.warn(f"fcrkit plugin {impl.plugin_name!r} ({origin}) failed while "
                                  f"registering components: {error}", PluginLoadWarning, stacklevel=2)
        registry.failures = failures
        return registry


_plugins: _Plugins | None = None


def _state() -> _Plugins:
    global _plugins
    if _plugins is None:
        _plugins = _Plugins()
    return _plugins


def get_registry() -> Registry:
    """The registry of every component from the built-ins and the installed plugins."""
    return _state().registry


def reload_plugins() -> Registry:
    """Forget everything loaded and load the built-ins and entry points again."""
    global _plugins
    _plugins = None
    return get_registry()


def register_plugin(plugin: object, name: str | None = None, origin: str = "registered at run time") -> Registry:
    """Register a plugin object (a module or any object with hook implementations) now."""
    state = _state()
    plugin_name = name or getattr(plugin, "__name__", type(plugin).__name__)
    state.add(plugin, plugin_name, origin)
    try:
        return state.registry
    except PluginError:  # leave the registry as it was before this plugin
        state.remove(plugin_name)
        raise


def unregister_plugin(name: str) -> Registry:
    """Remove a plugin registered with :func:`register_plugin`."""
    _state().remove(name)
    return get_registry()


@contextmanager
def plugin(obj: object, name: str | None = None) -> Iterator[Registry]:
    """Register ``obj`` as a plugin for the duration of a ``with`` block (handy in tests)."""
    plugin_name = name or getattr(obj, "__name__", type(obj).__name__)
    registry = register_plugin(obj, plugin_name, origin="registered for a test")
    try:
        yield registry
    finally:
        unregister_plugin(plugin_name)


@contextmanager
def isolated(*, entry_points: bool = False) -> Iterator[Registry]:
    """A fresh registry for the duration of a ``with`` block; the previous one comes back after.

    It holds the built-ins, plus the installed entry-point plugins if ``entry_points`` is true, and
    whatever is registered inside the block (which is forgotten at its end). Tests use it so that a
    plugin registered by one test never leaks into another.
    """
    global _plugins
    saved, before = _plugins, os.environ.get(DISABLE_ENV)
    os.environ[DISABLE_ENV] = "0" if entry_points else "1"
    try:
        _plugins = _Plugins()
    finally:
        if before is None:
            os.environ.pop(DISABLE_ENV)
        else:
            os.environ[DISABLE_ENV] = before
    try:
        yield _plugins.registry
    finally:
        _plugins = saved


def list_components(kind: str | None = None) -> list[ComponentRecord]:
    """What is registered: one record (kind, name, plugin, summary, origin) per component."""
    return get_registry().records(kind)
