"""contrastiveVI (Weinberger, Lin & Lee, Nature Methods 2023) from fcrkit's parts.

Two per-cell blocks: ``shared`` (variation common to background and target cells) and ``salient``
(variation of the target cells only). The ``masked`` combiner sets the salient block to zero for
background cells (the control cells of :func:`fcrkit.setup_anndata`) before the one decoder, as the
comparative model of the paper (and of Lopez et al., CLeaR 2024) says.
"""

from __future__ import annotations

from collections.abc import Mapping

from fcrkit.errors import ConfigError, did_you_mean, listing
from fcrkit.models.base import Recipe
from fcrkit.spec import (
    BlockSpec,
    ComponentSpec,
    ModelSpec,
    RegularizerSpec,
    check_latent_size,
)

BLOCKS = ("shared", "salient")  # the decoder reads [z_shared, z_salient]


def _sizes(n_latent: Mapping[str, int] | int) -> dict[str, int]:
    """``n_latent`` as ``{"shared": d_s, "salient": d_t}`` (one int: both blocks that size)."""
    if not isinstance(n_latent, Mapping):
        size = check_latent_size(n_latent, "n_latent")
        return {b: size for b in BLOCKS}
    unknown = [k for k in n_latent if k not in BLOCKS]
    if unknown:
        raise ConfigError(f"ContrastiveVI: n_latent has unknown block {unknown[0]!r}."
                          f"{did_you_mean(unknown[0], BLOCKS)} Its blocks are {listing(BLOCKS)}, e.g. "
                          "n_latent={'shared': 10, 'salient': 10}.")
    missing = [b for b in BLOCKS if b not in n_latent]
    if missing:
        raise ConfigError(f"ContrastiveVI: n_latent lacks block(s) {listing(missing)}; give both, e.g. "
                          "n_latent={'shared': 10, 'salient': 10}.")
    return {b: check_latent_size(n_latent[b], f"n_latent[{b!r}]") for b in BLOCKS}


def contrastivevi_spec(
    n_latent: Mapping[str, int] | int = 10,
    likelihood: str = "nb",
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout_rate: float = 0.1,
    kl_warmup_epochs: float = 0,
) -> ModelSpec:
    """The contrastiveVI spec; see :class:`ContrastiveVI` for the arguments."""
    sizes = _sizes(n_latent)
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers}
    encoder = ComponentSpec("mlp", (), {**mlp, "dropout": dropout_rate})
    return ModelSpec(
        name="contrastivevi",
        blocks=tuple(BlockSpec(b, sizes[b], encoder=encoder) for b in BLOCKS),
        combiner=ComponentSpec("masked", ("t",), {"block": "salient"}),
        decoder=ComponentSpec("mlp", (), mlp),
        likelihood=ComponentSpec(likelihood),
        regularizers=(RegularizerSpec("kl", weight=1.0, warmup_epochs=kl_warmup_epochs),),
    )


class ContrastiveVI(Recipe):
    """contrastiveVI: a shared latent for every cell, a salient latent for target cells only.

    Generative model, with the background cells the controls of :func:`fcrkit.setup_anndata`::

        z_shared  ~ N(0, I)                          every cell
        z_salient ~ N(0, I)                          every cell; enters the decoder for target cells only
        y ~ NB(library * softmax(f([z_shared, 1[target] * z_salient])), theta)

    with encoders ``q(z_shared | y)`` and ``q(z_salient | y)``. For a background cell the salient draw
    does not reach the decoder (``masked`` combiner), so its KL term is minimised by ``q = p`` and the
    bound is of the same marginal likelihood as the paper's model, in which the background cell has no
    salient variable; its salient posterior mean is pulled to 0.

    Args:
        adata: counts registered with :func:`fcrkit.setup_anndata` with a ``treatment_key``: cells at
            ``control_value`` are the background, every other cell is a target cell.
        seed: seed of the weight initialisation.

    Keyword Args:
        n_latent: ``{"shared": d_s, "salient": d_t}`` (one int: both).
        likelihood: ``"nb"``, ``"zinb"`` or ``"poisson"``.
        n_hidden, n_layers: width and depth of the encoders and the decoder.
        dropout_rate: encoder dropout.
        kl_warmup_epochs: epochs of linear KL warm-up (0 for none).

    ``get_latent_representation()`` returns ``{"X_contrastivevi_shared": ..., "X_contrastivevi_salient": ...}``
    (posterior means of every cell).
    """

    build_spec = staticmethod(contrastivevi_spec)
