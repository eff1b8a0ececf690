"""Treatment encoders: a treatment's embedding computed from its features, so unseen treatments have one.

Without features, a component that conditions on the treatment learns one free vector per treatment (the
columns of its first linear layer over the dose-weighted multi-hot ``t``): a treatment no training cell
received keeps its random initial vector. With ``fcrkit.setup_anndata(..., treatment_features=table)``
the model hands the components the feature matrix ``F`` (vocabulary x features) and each such component
builds a *treatment encoder* from it, which embeds treatment ``p`` as ``e_p = h(F_p)`` and a cell as the
dose-weighted sum over its treatments, ``Σ_p d_p e_p``. Treatments with similar features get similar
embeddings, learned from the treatments that were seen.

Treatment encoders are a component kind (:class:`fcrkit.protocols.TreatmentEncoder`), registered like
the others through ``fcrkit_register_components`` (``registry.treatment_encoder(name, factory)``; the
built-in ``"features"`` is registered by this module), and chosen by a component's option
``treatment_encoder`` (a name, or a table ``{name = ..., <options>}``; ``"none"`` (or None): the free
embedding even when the data have features). Components build theirs with
:func:`build_treatment_encoder`.

Components that take features: the ``conditional_gaussian`` prior (FCR's priors) and the
``additive_embedding`` decoder (CPA). A component opts in by taking the keyword argument
``treatment_features`` in its factory (the contract in :mod:`fcrkit.protocols`); the generic model
passes it when the setup has features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fcrkit.components.combiners import treatment_shifts
from fcrkit.components.nn import mlp, mlp_width
from fcrkit.data.labels import n_cells
from fcrkit.errors import ConfigError, UnknownComponentError
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import Labels
from fcrkit.registry import get_registry

__all__ = ["FeatureEncoder", "build_treatment_encoder"]


class FeatureEncoder(nn.Module):
    """``e_p = MLP(standardise(F_p))``; a cell's embedding is ``Σ_p d_p e_p`` over its treatment entries.

    Args:
        features: ``(n_treatments, n_features)`` feature matrix, rows in vocabulary order (not saved with
            the weights: it comes from the setup).
        n_hidden: width of the MLP's layers.
        n_layers: its hidden layers (0: the standardised features themselves; the component's own first
            linear layer then maps them, so the embedding is linear in the features).
        activation: the MLP's activation.
        standardize: centre and scale each feature column over the rows (a column's scale then does not
            decide how much it is used); constant columns are left centred.
    """

    def __init__(self, features: Tensor | np.ndarray, *, n_hidden: int = 64, n_layers: int = 1,
                 activation: str = "relu", standardize: bool = True):
        super().__init__()
        values = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            raise ConfigError(f"treatment encoder 'features' needs a (treatments x features) matrix, got shape "
                              f"{tuple(values.shape)}.")
        if standardize:
            spread = values.std(0, unbiased=False)
            values = (values - values.mean(0)) / torch.where(spread > 0, spread, torch.ones_like(spread))
        self.register_buffer("features", values, persistent=False)
        self.net = mlp(values.shape[1], n_hidden, n_layers, norm="none", activation=activation)
        self.width = mlp_width(values.shape[1], n_hidden, n_layers)

    def table(self) -> Tensor:
        """Every treatment's embedding, ``(n_treatments, width)``."""
        return self.net(self.features)

    def forward(self, labels: Labels) -> Tensor:
        """Each cell's ``Σ_p d_p e_p`` (0 for controls), ``(cells, width)``, by an embedding bag."""
        return treatment_shifts(labels, self.table(), n_cells(labels))


def build_treatment_encoder(choice: str | Mapping[str, Any] | None, features: Tensor | np.ndarray | None,
                            owner: str) -> nn.Module | None:
    """The encoder ``choice`` names (a name or ``{"name": ..., **options}``) over ``features``.

    None when there are no features or ``choice`` is ``"none"`` (or None or False): the component then
    keeps its free per-treatment embedding.

    ``owner`` (e.g. ``"prior 'conditional_gaussian'"``) is named in errors.
    """
    if choice is None or choice is False or choice == "none" or features is None:
        return None
    options: dict[str, Any] = {}
    if isinstance(choice, Mapping):
        options = {k: v for k, v in choice.items() if k != "name"}
        choice = choice.get("name")
    try:  # the registry names an unknown encoder, or an option it does not take, with what it has
        return get_registry().build("treatment_encoder", str(choice), features, **options)
    except (ConfigError, UnknownComponentError) as err:
        raise type(err)(f"{owner}: {err} (treatment_encoder = 'none' keeps a free embedding per treatment)") from None


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``features`` treatment encoder."""
    registry.treatment_encoder("features", FeatureEncoder)
