"""scVI (Lopez et al., Nature Methods 2018) from fcrkit's parts."""

from __future__ import annotations

from fcrkit.models.base import Recipe
from fcrkit.spec import (
    BlockSpec,
    ComponentSpec,
    ModelSpec,
    RegularizerSpec,
    check_latent_size,
)


def scvi_spec(
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    likelihood: str = "nb",
    dropout_rate: float = 0.1,
    kl_warmup_epochs: float = 20,
    condition_on_covariates: bool = False,
) -> ModelSpec:
    """The scVI spec: q(z | log1p y) -> N(0, I) prior -> MLP decoder -> NB/ZINB with the library size."""
    check_latent_size(n_latent, "n_latent")
    conditions = ("x",) if condition_on_covariates else ()
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers}
    return ModelSpec(
        name="scvi",
        blocks=(BlockSpec("z", n_latent, encoder=ComponentSpec("mlp", conditions, {**mlp, "dropout": dropout_rate})),),
        decoder=ComponentSpec("mlp", conditions, mlp),
        likelihood=ComponentSpec(likelihood),
        regularizers=(RegularizerSpec("kl", weight=1.0, warmup_epochs=kl_warmup_epochs),),
    )


class SCVI(Recipe):
    """scVI: a VAE of counts with a standard normal prior and an NB or ZINB likelihood.

    Encoder ``q(z | log1p y)``, decoder to gene fractions scaled by the cell's observed library
    size, per-gene inverse dispersion, KL warmed up linearly over ``kl_warmup_epochs``.

    Args:
        adata: counts registered with :func:`fcrkit.setup_anndata`.
        seed: seed of the weight initialisation.

    Keyword Args:
        n_latent: latent dimension.
        n_hidden, n_layers: width and depth of encoder and decoder.
        likelihood: ``"nb"``, ``"zinb"`` or ``"poisson"``.
        dropout_rate: encoder dropout.
        kl_warmup_epochs: epochs of linear KL warm-up (0 for none).
        condition_on_covariates: give encoder and decoder the covariates (scVI's batch correction).

    The latent goes to ``obsm["X_scvi"]``.
    """

    build_spec = staticmethod(scvi_spec)
