"""Recipes: models composed from registered parts, all with the same surface."""

from fcrkit.models.base import Model, Recipe, compose
from fcrkit.models.betavae import BetaVAE, betavae_spec
from fcrkit.models.fcr import FCR, fcr_spec
from fcrkit.models.scvi import SCVI, scvi_spec

__all__ = ["FCR", "BetaVAE", "Model", "Recipe", "SCVI", "betavae_spec", "compose", "fcr_spec", "scvi_spec"]
