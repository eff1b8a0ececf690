"""iVAE (Khemakhem, Kingma, Monti & Hyvärinen, AISTATS 2020) from fcrkit's parts.

One latent block whose prior is a learned conditional Gaussian given observed auxiliary labels
``u`` (the covariates ``x``, the treatment ``t``, or both)::

    p(z | u) = N(μ(u), diag σ²(u))      (registered prior ``conditional_gaussian``)
    q(z | y, u)                          (encoder ``mlp`` with conditions ``u``)
    p(y | z)                             (the decoder does not see ``u``)

    loss = −E_q[log p(y | z)] + KL(q(z | y, u) || p(z | u))

When the mixing is injective and the prior's sufficient statistics vary enough across the values
of ``u`` (for a Gaussian with learned mean and variance: at least ``2·n_latent + 1`` distinct
conditions in general position), the latents are identified up to a permutation and component-wise
affine maps, which a plain VAE's are not.
"""

from __future__ import annotations

from collections.abc import Sequence

from fcrkit.errors import ConfigError
from fcrkit.models.base import Recipe
from fcrkit.spec import (
    CONDITIONS,
    BlockSpec,
    ComponentSpec,
    ModelSpec,
    RegularizerSpec,
    check_latent_size,
    check_weight,
)


def check_aux(aux: str | Sequence[str]) -> tuple[str, ...]:
    """``aux`` as a tuple of condition names among ``"x"`` and ``"t"``; a ConfigError names a bad one."""
    labels = (aux,) if isinstance(aux, str) else aux
    if not isinstance(labels, Sequence) or not labels:
        raise ConfigError(f"aux={aux!r} must name the auxiliary labels: 'x' (covariates), 't' (treatment) "
                          "or both, e.g. ('x', 't').")
    labels = tuple(labels)
    bad = [a for a in labels if a not in CONDITIONS]
    if bad:
        raise ConfigError(f"aux={aux!r}: {bad[0]!r} is not a label; use 'x' (covariates) and/or 't' (treatment).")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"aux={aux!r} names a label twice.")
    return labels


def ivae_spec(
    likelihood: str = "nb",
    n_latent: int = 10,
    aux: str | Sequence[str] = ("x", "t"),
    *,
    n_hidden: int = 128,
    n_layers: int = 2,
    prior_hidden: int = 64,
    prior_layers: int = 1,
    beta: float = 1.0,
    kl_warmup_epochs: float = 10,
) -> ModelSpec:
    """The iVAE spec; see :class:`IVAE` for the arguments."""
    check_latent_size(n_latent, "n_latent")
    labels = check_aux(aux)
    beta = check_weight(beta, "beta")
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers}
    prior = ComponentSpec("conditional_gaussian", labels, {"n_hidden": prior_hidden, "n_layers": prior_layers})
    return ModelSpec(
        name="ivae",
        blocks=(BlockSpec("z", n_latent, prior=prior, encoder=ComponentSpec("mlp", labels, mlp)),),
        decoder=ComponentSpec("mlp", (), mlp),
        likelihood=ComponentSpec(likelihood),
        regularizers=(RegularizerSpec("kl", weight=beta, warmup_epochs=kl_warmup_epochs),),
    )


class IVAE(Recipe):
    """iVAE: a VAE whose prior is a learned Gaussian given auxiliary labels, for identifiable latents.

    Prior ``p(z | u) = N(μ(u), diag σ²(u))`` with ``μ`` and ``σ`` heads on an MLP embedding of the
    labels ``u`` (the ``conditional_gaussian`` prior: mean *and* variance vary with ``u``, which the
    identifiability theorem needs); encoder ``q(z | y, u)``; decoder ``p(y | z)`` without ``u``.
    The objective, minimised per cell::

        −E_q[log p(y | z)] + β·KL(q(z | y, u) || p(z | u))      (β = 1: the iVAE ELBO)

    Reference: Khemakhem, Kingma, Monti & Hyvärinen, "Variational Autoencoders and Nonlinear ICA:
    A Unifying Framework", AISTATS 2020.

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata`, with the labels named in ``aux``.
        seed: seed of the weight initialisation.

    Keyword Args:
        likelihood: ``"nb"``, ``"zinb"``, ``"poisson"`` (counts) or ``"gaussian"`` (log-normalised).
        n_latent: latent dimension.
        aux: the auxiliary labels ``u``: ``"x"`` (covariates), ``"t"`` (treatment) or both
            (default ``("x", "t")``: one prior per (covariate, treatment) combination).
        n_hidden, n_layers: encoder and decoder MLPs.
        prior_hidden, prior_layers: the prior's label embedding (0 layers: linear in the one-hot labels).
        beta: KL weight (1 for the iVAE ELBO).
        kl_warmup_epochs: linear warm-up of the KL weight (0 for none).

    The latent goes to ``obsm["X_ivae"]``. With ``"t"`` in ``aux``, ``predict`` redraws ``z`` from the
    prior under the target treatment.
    """

    build_spec = staticmethod(ivae_spec)
