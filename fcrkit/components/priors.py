"""Built-in priors of a latent block."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from fcrkit.components.nn import label_matrix, mlp, mlp_width, positive, total_width
from fcrkit.components.treatments import build_treatment_encoder
from fcrkit.data.labels import with_values
from fcrkit.errors import ConfigError, listing
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import LabelDims, Labels


def outer_features(labels: Labels, keys: tuple[str, ...]) -> Tensor:
    """Per cell, the Kronecker product of the label vectors ``[labels[k], 1]`` over ``keys``.

    Its entries are the constant, each label entry, and every product of entries of different
    labels: a linear map of it can take any value per combination of one-hot labels.
    """
    out = None
    for key in keys:
        part = labels[key]
        part = torch.cat([part, torch.ones_like(part[..., :1])], dim=-1)
        out = part if out is None else (out.unsqueeze(-1) * part.unsqueeze(-2)).flatten(-2)
    return out


class StandardNormal(nn.Module):
    """Standard normal prior N(0, I), conditioned on nothing."""

    def __init__(self, dim: int, label_dims: LabelDims):
        super().__init__()
        if label_dims:
            raise ConfigError(
                f"prior 'standard_normal' conditions on nothing, but the spec gives it conditions "
                f"{listing(label_dims)}; remove them or use 'conditional_gaussian'."
            )
        self.dim = dim
        self.register_buffer("_zero", torch.zeros(()), persistent=False)  # follows .to(device)

    def distribution(self, labels: Labels, n: int) -> dist.Distribution:
        """``N(0, I)`` for ``n`` cells (batch ``(n,)``, event ``(dim,)``)."""
        loc = self._zero.expand(n, self.dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


class ConditionalGaussian(nn.Module):
    """Conditional diagonal Gaussian p(z | labels): mean and scale are functions of label embeddings.

    Both the mean and the scale depend on the condition, which is what identifiability results for
    conditional priors (iVAE, FCR) need.

    Args:
        dim: latent dimension of the block.
        label_dims: the labels it conditions on (its spec ``conditions``, e.g. ``["x"]``).
        combine: ``"concat"`` embeds the concatenated labels with one MLP; ``"product"`` embeds each
            condition with its own MLP and multiplies the embeddings element-wise (FCR's
            ``k_t ⊙ k_x``; needs two or more conditions); ``"outer"`` embeds the outer (Kronecker)
            product of the label vectors, each extended by a constant 1, so its features are every
            main effect and every interaction of the labels: with ``n_layers=0`` the mean and scale
            are then free per condition (a learned table, iVAE's most flexible prior), also for a
            (covariate, treatment) pair whose value no additive form reaches.
        n_hidden: embedding width.
        n_layers: MLP depth of each embedding (0 with ``"concat"``: linear in the one-hot labels).
        activation: hidden activation.
        learn_scale: if False the scale is fixed to 1 and only the mean depends on the labels.
        min_scale: floor of the prior standard deviation.
        embeddings_from: with ``"product"``, take each condition's embedding from another block's
            prior instead of owning one: ``{"x": "x", "t": "t"}`` multiplies the embeddings of the
            priors of blocks ``x`` (conditioned on ``x`` alone) and ``t`` (on ``t`` alone), FCR's
            ``p(z_tx | t, x)`` from ``k_t ⊙ k_x`` with the very ``k_x``, ``k_t`` of ``p(z_x | x)`` and
            ``p(z_t | t)`` (the paper's Figure 2a). Those priors own the embeddings (and save them);
            this one holds only its mean and scale heads. Resolved by :meth:`link`.
        treatment_features: the treatments' feature matrix (vocabulary x features); the generic model
            passes it when the data were set up with ``treatment_features``. The ``t`` condition is then
            embedded by ``treatment_encoder`` from the features (see :mod:`fcrkit.components.treatments`)
            instead of one free vector per treatment, so an unseen treatment has a prior too.
        treatment_encoder: the encoder of the features (a name or ``{name = ..., <options>}``; ``"none"``:
            the free embedding even with features).
    """

    def __init__(
        self,
        dim: int,
        label_dims: LabelDims,
        *,
        combine: str = "concat",
        n_hidden: int = 64,
        n_layers: int = 1,
        activation: str = "relu",
        learn_scale: bool = True,
        min_scale: float = 1e-3,
        embeddings_from: Mapping[str, str] | None = None,
        treatment_features: Tensor | None = None,
        treatment_encoder: str | Mapping[str, object] | None = "features",
    ):
        super().__init__()
        self.treatment_encoder = None
        if "t" in label_dims and not embeddings_from:  # with embeddings_from, the owners embed t
            self.treatment_encoder = build_treatment_encoder(treatment_encoder, treatment_features,
                                                             "prior 'conditional_gaussian'")
            if self.treatment_encoder is not None:
                label_dims = {**label_dims, "t": self.treatment_encoder.width}
        if not label_dims:
            raise ConfigError(
                "prior 'conditional_gaussian' needs labels to condition on: give it conditions, "
                "e.g. prior = {name = 'conditional_gaussian', conditions = ['x']}."
            )
        if combine not in ("concat", "product", "outer"):
            raise ConfigError(f"option combine={combine!r} is not one of 'concat', 'product', 'outer'.")
        if combine == "product" and (len(label_dims) < 2 or n_layers < 1):
            raise ConfigError("combine='product' needs at least two conditions and n_layers >= 1.")
        self.dim = dim
        self.conditions = tuple(label_dims)
        self.combine = combine
        self.embeddings_from = dict(embeddings_from or {})
        self._shared: dict[str, nn.Module] = {}  # plain attribute: the owners register (and save) them
        if self.embeddings_from:
            if combine != "product" or set(self.embeddings_from) != set(self.conditions):
                raise ConfigError(f"option embeddings_from={self.embeddings_from!r} needs combine='product' and one "
                                  f"block per condition of this prior ({listing(self.conditions)}).")
            self.embed = nn.ModuleDict()
            width = n_hidden
        elif combine in ("concat", "outer"):
            n_in = total_width(label_dims) if combine == "concat" else math.prod(d + 1 for d in label_dims.values())
            self.embed = nn.ModuleDict({"all": mlp(n_in, n_hidden, n_layers, norm="none", activation=activation)})
            width = mlp_width(n_in, n_hidden, n_layers)
        else:
            self.embed = nn.ModuleDict(
                {key: mlp(d, n_hidden, n_layers, norm="none", activation=activation) for key, d in label_dims.items()}
            )
            width = n_hidden
        self.loc = nn.Linear(width, dim)
        self.scale = nn.Linear(width, dim) if learn_scale else None
        self.min_scale = float(min_scale)

    def embedding(self, labels: Labels) -> Tensor:
        """The condition embedding the mean and scale heads read."""
        if self.treatment_encoder is not None:  # t's features in place of its multi-hot row
            labels = with_values(labels, {"t": self.treatment_encoder(labels)})  # no dense row of t built
        if self.combine == "concat":
            return self.embed["all"](label_matrix(labels, self.conditions))
        if self.combine == "outer":
            return self.embed["all"](outer_features(labels, self.conditions))
        if self.embeddings_from:
            if not self._shared:
                raise ConfigError("prior 'conditional_gaussian' with embeddings_from is used before link(priors) "
                                  "gave it the other blocks' priors (the generic model does that when it is built).")
            parts = [self._shared[key].embedding({key: labels[key]}) for key in self.conditions]
        else:
            parts = [self.embed[key](labels[key]) for key in self.conditions]
        out = parts[0]
        for part in parts[1:]:
            out = out * part
        return out

    def link(self, priors: Mapping[str, nn.Module]) -> None:
        """Take the embeddings named by ``embeddings_from`` from the other blocks' ``priors``."""
        for key, block in self.embeddings_from.items():
            source = priors.get(block)
            if source is None:
                raise ConfigError(f"prior 'conditional_gaussian': embeddings_from names block {block!r}, which the "
                                  f"model does not have (blocks: {listing(priors)}).")
            if getattr(source, "conditions", None) != (key,) or not callable(getattr(source, "embedding", None)):
                raise ConfigError(f"prior 'conditional_gaussian': embeddings_from={{{key!r}: {block!r}}} needs block "
                                  f"{block!r}'s prior to embed {key!r} alone, but it is {type(source).__name__} with "
                                  f"conditions {listing(getattr(source, 'conditions', ()))}.")
            width = getattr(getattr(source, "loc", None), "in_features", None)
            if width != self.loc.in_features:
                raise ConfigError(f"prior 'conditional_gaussian': block {block!r}'s embedding of {key!r} is {width} "
                                  f"wide, this prior's n_hidden is {self.loc.in_features}; give both the same width.")
            self._shared[key] = source

    def distribution(self, labels: Labels, n: int) -> dist.Distribution:
        """``N(μ(labels), diag σ²(labels))`` for the ``n`` cells of ``labels``."""
        h = self.embedding(labels)
        loc = self.loc(h)
        scale = positive(self.scale(h), self.min_scale) if self.scale is not None else torch.ones_like(loc)
        return dist.Normal(loc, scale).to_event(1)


def _probability(value: Any, option: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"prior {owner!r}: {option}={value!r} must be a number strictly between 0 and 1.")
    return float(value)


def _positive(value: Any, option: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"prior {owner!r}: {option}={value!r} must be a positive number.")
    return float(value)


class BernoulliPrior(nn.Module):
    """Bernoulli prior of a binary mask block: each entry is on with probability ``probs``.

    The probabilities are a fixed number (``probs``), or the value of a global block the spec lists
    as the prior's one condition (e.g. ``conditions = ["mask_prob"]`` for a block with a Beta prior:
    a Beta-Bernoulli mask whose hyperprior is a real site, sVAE+'s). With ``temperature`` the prior
    is the relaxed Bernoulli at that temperature instead (scored at the relaxed value of a
    straight-through draw, matching a ``relaxed_bernoulli`` posterior's density); without, the
    Bernoulli probability of the 0/1 value.

    Args:
        dim: the block's dimension.
        label_dims: nothing, or one global block of the same dimension holding the probabilities.
        probs: the probability of an entry being on, when no block gives it.
        temperature: None (a Bernoulli) or τ > 0 (a relaxed Bernoulli).
    """

    def __init__(self, dim: int, label_dims: LabelDims, *, probs: float = 0.5, temperature: float | None = None):
        super().__init__()
        sources = list(label_dims)
        if len(sources) > 1 or any(s in ("x", "t") for s in sources):
            raise ConfigError(f"prior 'bernoulli' reads its probabilities from at most one global block, but the spec "
                              f"gives it conditions {listing(sources)}; give one block (plate 't' or 'x') or none.")
        if sources and label_dims[sources[0]] != dim:
            raise ConfigError(f"prior 'bernoulli': block {sources[0]!r} has dimension {label_dims[sources[0]]}, the "
                              f"mask {dim}; the probabilities need one entry per mask entry.")
        self.dim = dim
        self.source = sources[0] if sources else None
        self.temperature = None if temperature is None else _positive(temperature, "temperature", "bernoulli")
        self.register_buffer("probs", torch.tensor(_probability(probs, "probs", "bernoulli")), persistent=False)

    def distribution(self, labels: Labels, n: int) -> dist.Distribution:
        """Independent Bernoulli (or relaxed Bernoulli) entries, batch ``(n,)``, event ``(dim,)``."""
        probs = labels[self.source] if self.source else self.probs.expand(n, self.dim)
        if self.temperature is None:
            return dist.Bernoulli(probs=probs).to_event(1)
        return dist.RelaxedBernoulliStraightThrough(torch.tensor(self.temperature).to(probs), probs=probs).to_event(1)


class BetaPrior(nn.Module):
    """Beta(``concentration1``, ``concentration0``) prior on each entry, e.g. the probabilities of a mask.

    sVAE+'s hyperprior is ``Beta(1, K)``: ``concentration1 = 1``, ``concentration0 = K`` (K = 1: uniform,
    no pressure; larger K: sparser masks).

    Args:
        dim: the block's dimension.
        label_dims: must be empty.
        concentration1: the Beta's first shape parameter (α).
        concentration0: the Beta's second shape parameter (β).
    """

    def __init__(self, dim: int, label_dims: LabelDims, *, concentration1: float = 1.0,
                 concentration0: float = 1.0):
        super().__init__()
        if label_dims:
            raise ConfigError(f"prior 'beta' conditions on nothing, but the spec gives it conditions "
                              f"{listing(label_dims)}; remove them.")
        self.dim = dim
        c1, c0 = (_positive(v, k, "beta") for k, v in (("concentration1", concentration1),
                                                       ("concentration0", concentration0)))
        self.register_buffer("concentrations", torch.tensor([c1, c0]), persistent=False)

    def distribution(self, labels: Labels, n: int) -> dist.Distribution:
        """``Beta(α, β)`` entries, batch ``(n,)``, event ``(dim,)``."""
        c1, c0 = self.concentrations
        return dist.Beta(c1.expand(n, self.dim), c0.expand(n, self.dim)).to_event(1)


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``standard_normal``, ``conditional_gaussian``, ``bernoulli`` and ``beta`` priors."""
    registry.prior("standard_normal", StandardNormal)
    registry.prior("conditional_gaussian", ConditionalGaussian)
    registry.prior("bernoulli", BernoulliPrior)
    registry.prior("beta", BetaPrior)
