"""VCI: Variational Causal Inference (Wu, Barton, Bouchard-Côté & Nielsen, arXiv:2209.05935) from fcrkit's parts.

An encoder ``q(z | y, x, t)`` and a decoder ``p(y | z, x, t)`` that both see the treatment; the
prior's role is played by the posterior of a counterfactual (regulariser ``counterfactual``)::

    t' ~ another treatment,   y' = E[y | z, x, t']
    loss = −E_q[log p(y | z, x, t)] + β·KL(q(z | y, x, t) || N(0, I))
           + ω₁·KL(q(z | y, x, t) || q(z | sg(y'), x, t')) + ω₂·match(y'; observed cells of (x, t'))

``predict`` encodes a cell with its own labels and decodes the posterior mean with the target
treatment. See docs/recipes/vci.md for what differs from the paper and its code.
"""

from __future__ import annotations

from fcrkit.models.base import Recipe
from fcrkit.spec import (
    BlockSpec,
    ComponentSpec,
    ModelSpec,
    RegularizerSpec,
    check_latent_size,
    check_weight,
)


def vci_spec(n_latent: int = 32, likelihood: str = "nb", n_hidden: int = 256, n_layers: int = 2,
             beta: float = 0.0, kl_weight: float = 5.0, match_weight: float = 3.0, bandwidth: float = 1.0,
             kernel: str = "kde", decoder_sees_covariates: bool = True, norm: str = "batch") -> ModelSpec:
    """The VCI spec; see :class:`VCI` for the arguments."""
    check_latent_size(n_latent, "n_latent")
    beta = check_weight(beta, "beta")
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers, "norm": norm}
    decoder_conditions = ("x", "t") if decoder_sees_covariates else ("t",)
    counterfactual = {"kl_weight": check_weight(kl_weight, "kl_weight"),
                      "match_weight": check_weight(match_weight, "match_weight"),
                      "bandwidth": bandwidth, "kernel": kernel}
    return ModelSpec(
        name="vci",
        blocks=(BlockSpec("z", n_latent, encoder=ComponentSpec("mlp", ("x", "t"), mlp)),),
        decoder=ComponentSpec("mlp", decoder_conditions, mlp),
        likelihood=ComponentSpec(likelihood),
        regularizers=(RegularizerSpec("kl", weight=beta), RegularizerSpec("counterfactual", options=counterfactual)),
    )


class VCI(Recipe):
    """VCI: an autoencoder whose posterior must agree with the posterior of its own counterfactual.

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata` with a ``treatment_key`` and
            ``covariate_keys``.
        seed: seed of the weight initialisation.

    Keyword Args:
        n_latent: latent dimension; n_hidden, n_layers, norm: the encoder and decoder MLPs.
        likelihood: any registered likelihood (``"nb"`` for counts; ``"lognorm_gaussian"`` for a Gaussian
            of the log-normalised counts; ``"gaussian"`` for log-normalised data).
        beta: weight of a standard-normal KL on ``z`` (0, the paper's objective, has none).
        kl_weight: ω₁, weight of the counterfactual posterior KL.
        match_weight: ω₂, weight of the match of the counterfactual with observed cells of (x, t').
        bandwidth, kernel: the match's Gaussian kernel (``"kde"`` log-density or ``"mean"`` log-kernel).
        decoder_sees_covariates: the decoder sees ``(z, x, t)``; False gives the paper's ``(z, t)``.

    The latent goes to ``obsm["X_vci"]``. ``predict`` is the generic one: the cells are encoded with
    their own labels (posterior means) and decoded with the target treatment, since the decoder sees t.
    """

    build_spec = staticmethod(vci_spec)
