"""β-VAE (Higgins et al., ICLR 2017) from fcrkit's parts."""

from __future__ import annotations

from fcrkit.models.base import Recipe
from fcrkit.spec import (
    BlockSpec,
    ComponentSpec,
    ModelSpec,
    RegularizerSpec,
    check_latent_size,
)


def betavae_spec(n_latent: int = 10, beta: float = 4.0, likelihood: str = "nb", n_hidden: int = 128,
                 n_layers: int = 2, kl_warmup_epochs: float = 10) -> ModelSpec:
    """One block with a standard normal prior, its KL weighted by ``beta``."""
    check_latent_size(n_latent, "n_latent")
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers}
    return ModelSpec(
        name="betavae",
        blocks=(BlockSpec("z", n_latent, encoder=ComponentSpec("mlp", (), mlp)),),
        decoder=ComponentSpec("mlp", (), mlp),
        likelihood=ComponentSpec(likelihood),
        regularizers=(RegularizerSpec("kl", weight=beta, warmup_epochs=kl_warmup_epochs),),
    )


class BetaVAE(Recipe):
    """β-VAE: ``q(z | y)``, prior N(0, I), ELBO with the KL weighted by β.

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata`.
        seed: seed of the weight initialisation.

    Keyword Args:
        n_latent: latent dimension.
        beta: the KL weight.
        likelihood: any registered likelihood.
        n_hidden, n_layers: encoder and decoder MLPs.
        kl_warmup_epochs: linear warm-up of the KL.

    The latent goes to ``obsm["X_betavae"]``.
    """

    build_spec = staticmethod(betavae_spec)
