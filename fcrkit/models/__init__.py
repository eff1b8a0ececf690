"""Recipes: models composed from registered parts, all with the same surface."""

from fcrkit.models.base import Model, compose
from fcrkit.models.scvi import SCVI, scvi_spec

__all__ = ["Model", "SCVI", "compose", "scvi_spec"]
