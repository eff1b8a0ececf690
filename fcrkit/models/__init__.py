"""Recipes: models composed from registered parts, all with the same surface."""

from fcrkit.models.base import Model, Recipe, compose
from fcrkit.models.betavae import BetaVAE, betavae_spec
from fcrkit.models.cpa import CPA, cpa_spec
from fcrkit.models.factorvae import FactorVAE, factorvae_spec
from fcrkit.models.fcr import FCR, fcr_spec
from fcrkit.models.hcv import HCV, hcv_spec
from fcrkit.models.ivae import IVAE, ivae_spec
from fcrkit.models.scvi import SCVI, scvi_spec
from fcrkit.models.svae import SVAE, svae_spec

__all__ = ["FCR", "HCV", "IVAE", "BetaVAE", "FactorVAE", "Model", "Recipe", "SCVI", "betavae_spec", "compose",
           "factorvae_spec", "fcr_spec", "hcv_spec", "ivae_spec", "scvi_spec"]
__all__ += ["SVAE", "svae_spec"]
__all__ += ["CPA", "cpa_spec"]
from fcrkit.models.scgen import ScGen, scgen_spec  # noqa: E402
from fcrkit.models.vci import VCI, vci_spec  # noqa: E402

__all__ += ["VCI", "ScGen", "scgen_spec", "vci_spec"]
from fcrkit.models.baselines import Additive, Baseline, LinearRidge, NoChange, PerturbedMean  # noqa: E402

__all__ += ["Additive", "Baseline", "LinearRidge", "NoChange", "PerturbedMean"]
from fcrkit.models.contrastivevi import ContrastiveVI, contrastivevi_spec  # noqa: E402

__all__ += ["ContrastiveVI", "contrastivevi_spec"]
from fcrkit.models.samsvae import SAMSVAE, samsvae_spec  # noqa: E402

__all__ += ["SAMSVAE", "samsvae_spec"]
