"""The default plugin that registers fcrkit's own recipes, through the hook a third party's recipes use.

Every :class:`~fcrkit.models.Recipe` subclass of :mod:`fcrkit.models` is registered under its
class name (``FCR``, ``SCVI``, ``ContrastiveVI`` ...), the name run configs and benchmarks use.
"""

from __future__ import annotations

from typing import Any

from fcrkit.hookspecs import hookimpl


def builtin_recipes() -> dict[str, type]:
    """The recipe classes of :mod:`fcrkit.models`, by class name."""
    from fcrkit import models  # at call time: this plugin is loaded while fcrkit.models may be importing

    return {name: obj for name, obj in sorted(vars(models).items())
            if isinstance(obj, type) and issubclass(obj, models.Recipe) and obj is not models.Recipe}


@hookimpl
def fcrkit_register_recipes(registry: Any) -> None:
    """Register the built-in recipes."""
    for name, cls in builtin_recipes().items():
        registry.recipe(name, cls)
