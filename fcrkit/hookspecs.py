"""Hook specifications: the whole plugin interface of fcrkit.

A plugin is a module (or any object) with functions marked ``@fcrkit.hookimpl`` whose names and
arguments match the specs below. Third-party plugins are found through the ``fcrkit`` entry-point
group; fcrkit's own components are registered through the same hook by default plugins.
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
