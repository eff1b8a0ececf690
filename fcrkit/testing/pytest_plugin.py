"""pytest fixtures for testing fcrkit plugins; enable with ``pytest_plugins = ["fcrkit.testing.pytest_plugin"]``.

- ``fcrkit_registry``: a fresh registry holding only fcrkit's built-ins for one test (installed
  entry-point plugins are not loaded, and nothing registered in the test outlives it).
- ``fcrkit_plugin``: a function ``fcrkit_plugin(obj, name=None) -> Registry`` that registers a plugin
  object (a module or any object with ``@fcrkit.hookimpl`` functions) for one test, in that fresh
  registry::

      def test_my_penalty_trains(fcrkit_plugin):
          import my_package.fcrkit_plugin as plugin
          fcrkit_plugin(plugin)
          model = fcrkit.models.FCR(tiny_adata(), "nb", 3, regularizers=[{"name": "my_penalty"}])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from fcrkit.registry import Registry, isolated, register_plugin


@pytest.fixture
def fcrkit_registry() -> Iterator[Registry]:
    """A registry of the built-ins only, for the duration of one test."""
    with isolated(entry_points=False) as registry:
        yield registry


@pytest.fixture
def fcrkit_plugin(fcrkit_registry: Registry) -> Callable[..., Registry]:
    """Register a plugin object for one test: ``fcrkit_plugin(obj, name=None)`` returns the registry."""

    def register(obj: object, name: str | None = None) -> Registry:
        return register_plugin(obj, name, origin="registered for a test")

    return register
