"""fcrkit: composable disentangled generative models of single-cell perturbation data.

Parts (encoders, priors, decoders, likelihoods, regularisers) are plugins in a registry; a
:class:`ModelSpec` says which parts a model uses; :func:`compose` builds the Pyro model and guide;
recipes in :mod:`fcrkit.models` are short specs.
"""

__version__ = "0.1.0"

from fcrkit import metrics, models
from fcrkit.data import simulate
from fcrkit.data.anndata import setup_anndata
from fcrkit.hookspecs import hookimpl
from fcrkit.models.base import compose
from fcrkit.protocols import Context, ModelInfo
from fcrkit.registry import ComponentRecord, Registry, get_registry, list_components
from fcrkit.spec import BlockSpec, ComponentSpec, ModelSpec, RegularizerSpec

__all__ = [
    "BlockSpec",
    "ComponentRecord",
    "ComponentSpec",
    "Context",
    "ModelInfo",
    "ModelSpec",
    "Registry",
    "RegularizerSpec",
    "__version__",
    "compose",
    "get_registry",
    "hookimpl",
    "list_components",
    "metrics",
    "models",
    "setup_anndata",
    "simulate",
]
