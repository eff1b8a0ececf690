"""Hook specifications: the whole plugin interface of fcrkit.

A plugin is a module (or any object) with functions marked ``@fcrkit.hookimpl`` whose names and
arguments match the specs below (it implements one or both). Third-party plugins are found through
the ``fcrkit`` entry-point group; fcrkit's own components and recipes are registered through the same
hooks by default plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from fcrkit.registry import Registry

PROJECT = "fcrkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def fcrkit_register_components(registry: Registry) -> None:
    """Register components with ``registry``.

    Call ``registry.encoder(name, factory)``, ``registry.prior(...)``, ``registry.decoder(...)``,
    ``registry.likelihood(...)``, ``registry.regularizer(...)``, ``registry.posterior(...)`` or
    ``registry.combiner(...)`` once per component. The factory's
    call signature and the object it must return are given in :mod:`fcrkit.protocols`; a factory
    that cannot take those arguments, or a name another plugin already registered, is an error
    that names this plugin.

    Example::

        @fcrkit.hookimpl
        def fcrkit_register_components(registry):
            registry.regularizer("l1_latent", L1Latent, summary="L1 penalty on a block's means")
    """


@hookspec
def fcrkit_register_recipes(registry: Registry) -> None:
    """Register whole models (recipes) with ``registry``.

    Call ``registry.recipe(name, cls)`` once per recipe: ``cls`` is a subclass of
    :class:`fcrkit.models.Recipe` (its ``build_spec`` writes the spec from the recipe's arguments).
    A registered recipe is listed by ``fcrkit components --kind recipe`` and can be named in a run
    config (``[model] recipe = "name"``) and a benchmark's ``[recipes]``, like the built-in ones.
    A class that is not a recipe, or a name another plugin already registered, is an error that
    names this plugin.

    Example::

        @fcrkit.hookimpl
        def fcrkit_register_recipes(registry):
            registry.recipe("MyVAE", MyVAE, summary="a VAE with my prior")
    """
