"""The plugin module the ``fcrkit`` entry point names: it registers this package's components."""

from __future__ import annotations

import fcrkit
from fcrkit_independence.nhsic import NormalizedHSIC


@fcrkit.hookimpl
def fcrkit_register_components(registry) -> None:
    registry.regularizer("independence_nhsic", NormalizedHSIC)
