"""FCR: Factorized Causal Representation (Mao et al., NeurIPS 2024) from fcrkit's parts.

Three latent blocks per cell with conditional priors and block encoders::

    p(z_x | x)        q(z_x | y, x)          covariate-specific
    p(z_t | t)        q(z_t | y, t)          treatment-specific
    p(z_tx | t, x)    q(z_tx | y, t, x)      interaction

a decoder on ``[z_x, z_tx, z_t]``, each cell paired with a random control of its covariates whose
ELBO is added, and the regularisers of the paper's Figure 2c, each with its own weight (see
:data:`DEFAULT_WEIGHTS`). The slips of the public code are not copied: the ELBO sums over genes with
the proper KL, the paired control (not the treated cell) is encoded with ``t = 0``, and the
discriminators' adversarial gradient reaches the encoders (``published_noop=True`` reproduces the
published no-op for comparison).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fcrkit.errors import ConfigError, did_you_mean, listing
from fcrkit.models.base import Recipe
from fcrkit.spec import (
    BlockSpec,
    ComponentSpec,
    ModelSpec,
    RegularizerSpec,
    check_latent_size,
)

#: Weight of each FCR regulariser (a weight of 0 leaves the term out). The ELBO is summed over genes
#: (the authors averaged it), so these are larger than the authors' (similarity 5, classifiers 5,
#: permutation 0.1). Measured on the interaction simulator (3 seeds, 60 epochs, median z_tx MCC):
#: similarity 0 / 10 / 50 gave 0.64 / 0.79 / 0.75; discriminators at 30 instead of 10 did not help.
DEFAULT_WEIGHTS: dict[str, float] = {
    "kl": 1.0,
    "treatment_classifier": 50.0,
    "covariate_classifier": 50.0,
    "similarity": 10.0,
    "permutation_t": 10.0,
    "permutation_x": 10.0,
    "condition_kl": 0.0,
}
BLOCKS = ("x", "tx", "t")  # the decoder reads [z_x, z_tx, z_t]

#: Settings that make FCR's interaction block identifiable on ``fcrkit.simulate.hard_interaction``
#: (``FCR(adata, **HARD_WORLD["model"])``, ``model.train(**HARD_WORLD["train"])``): every prior is a
#: free per-condition table (``tx_prior="outer"``, ``prior_layers=0``), so that the priors of
#: ``z_tx`` vary across all (x, t) pairs as freely as the identifiability theory asks. Not the
#: default: a table has no learned entry for a (covariate, treatment) pair never seen in training,
#: whose ``z_tx`` prior then falls back to the main effects plus an untrained interaction weight.
#: 100 epochs rather than 60: with the stronger mixing the fit is not done by epoch 60.
#: Measurements: ``docs/recipes/fcr.md`` (``benchmarks/fcr_hard_world.py``).
HARD_WORLD: dict[str, dict[str, Any]] = {
    "model": {"tx_prior": "outer", "prior_layers": 0},
    "train": {"max_epochs": 100, "batch_size": 256, "lr": 3e-3},
}


def fcr_spec(
    likelihood: str = "nb",
    n_latent: Mapping[str, int] | int = 10,
    weights: Mapping[str, float] | None = None,
    regularizers: Iterable[RegularizerSpec | Mapping[str, Any] | str] = (),
    *,
    tx_prior: str = "concat",
    n_hidden: int = 128,
    n_layers: int = 2,
    prior_hidden: int = 64,
    prior_layers: int = 1,
    kl_warmup_epochs: float = 10,
    control_pairing: str = "covariates",
    published_noop: bool = False,
    alternate_every: int = 0,
    classifier_reads_tx: bool = False,
    joint_encoder: bool = False,
) -> ModelSpec:
    """The FCR spec; see :class:`FCR` for the arguments."""
    if not isinstance(n_latent, Mapping):  # one size for every block
        sizes = {b: check_latent_size(n_latent, "n_latent") for b in BLOCKS}
    else:
        sizes = dict(n_latent)
        if set(sizes) != set(BLOCKS):
            raise ConfigError(f"n_latent={sizes!r} must give sizes for exactly the blocks 'x', 't', 'tx'.")
        for block, size in sizes.items():
            check_latent_size(size, f"n_latent[{block!r}]")
    w = dict(DEFAULT_WEIGHTS)
    for key, value in (weights or {}).items():
        if key not in w:
            raise ConfigError(f"FCR weights: unknown term {key!r}.{did_you_mean(key, w)} Terms: {listing(w)}.")
        w[key] = value
    if tx_prior not in ("concat", "product", "outer"):
        raise ConfigError(f"tx_prior={tx_prior!r} is not 'concat' (the authors' run), 'product' "
                          "(the paper's k_t ⊙ k_x) or 'outer' (every interaction of the labels).")

    conditions = {"x": ("x",), "t": ("t",), "tx": ("x", "t")}
    encoder = {"n_hidden": n_hidden, "n_layers": n_layers}

    def prior(block: str) -> ComponentSpec:
        options: dict[str, Any] = {"n_hidden": prior_hidden, "n_layers": prior_layers}
        if block == "tx":
            options["combine"] = tx_prior
            if tx_prior == "product":  # k_t ⊙ k_x with the embeddings of p(z_t | t) and p(z_x | x)
                options["embeddings_from"] = {"x": "x", "t": "t"}
        return ComponentSpec("conditional_gaussian", conditions[block], options)

    blocks = tuple(BlockSpec(b, sizes[b], prior=prior(b), encoder=ComponentSpec("mlp", conditions[b], encoder))
                   for b in BLOCKS)
    adversary = {"alternate_every": alternate_every, "published_noop": published_noop}
    terms = [
        RegularizerSpec("kl", w["kl"], kl_warmup_epochs),
        RegularizerSpec("label_classifier", w["treatment_classifier"], 0,
                        {"blocks": ["t", "tx"] if classifier_reads_tx else ["t"], "label": "t"},
                        key="treatment_classifier"),
        RegularizerSpec("label_classifier", w["covariate_classifier"], 0, {"blocks": ["x"], "label": "x"},
                        key="covariate_classifier"),
        RegularizerSpec("control_similarity", w["similarity"], key="similarity"),
        RegularizerSpec("permutation_discriminator", w["permutation_t"], 0, {"blocks": ["t", "tx"], **adversary},
                        key="permutation_t"),
        RegularizerSpec("permutation_discriminator", w["permutation_x"], 0, {"blocks": ["x", "tx"], **adversary},
                        key="permutation_x"),
        RegularizerSpec("condition_kl", w["condition_kl"], key="condition_kl"),
    ]
    terms = [t for t in terms if t.weight != 0 or t.key == "kl"]
    for extra in regularizers:  # add, or override by key
        extra = RegularizerSpec.parse(extra)
        terms = [t for t in terms if t.key != extra.key] + [extra]
    joint = ComponentSpec("mlp", ("x", "t"), encoder) if joint_encoder else None
    return ModelSpec(name="fcr", blocks=blocks, decoder=ComponentSpec("mlp", (), encoder),
                     likelihood=ComponentSpec(likelihood), regularizers=tuple(terms), control_pairing=control_pairing,
                     joint_encoder=joint)


class FCR(Recipe):
    """FCR: covariate, treatment and interaction blocks with conditional priors (see the module doc).

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata` (a treatment and covariates).
        seed: seed of the weight initialisation.

    Keyword Args:
        likelihood: ``"nb"``, ``"zinb"``, ``"poisson"`` (counts) or ``"gaussian"`` (log-normalised).
        n_latent: size of each block, ``{"x": .., "t": .., "tx": ..}``, or one size for all.
        weights: override weights of the terms in :data:`DEFAULT_WEIGHTS` (0 removes a term).
        regularizers: extra regularisers (names, dicts or RegularizerSpecs) added to the spec, or
            replacing the FCR term with the same key; e.g. ``[{"name": "my_hsic", "weight": 10}]``.
        tx_prior: form of ``p(z_tx | t, x)``: ``"concat"`` (an MLP on the concatenated labels, as
            in the authors' run), ``"product"`` (``k_t ⊙ k_x``, the paper's figure, with the label
            embeddings ``k_x``, ``k_t`` of the priors ``p(z_x | x)`` and ``p(z_t | t)``, shared) or
            ``"outer"`` (features of every label interaction; with ``prior_layers=0`` a free table
            per condition, see :data:`HARD_WORLD`).
        n_hidden, n_layers: encoder and decoder MLPs.
        prior_hidden: the priors' embedding width.
        prior_layers: hidden layers of each prior's embedding (0: linear in the label features).
        kl_warmup_epochs: linear KL warm-up.
        control_pairing: ``"covariates"`` (controls of the same covariates) or ``"any"``.
        published_noop: reproduce the published code's discriminators, which pass no gradient.
        alternate_every: train the discriminators only in every k-th epoch (the authors used 8);
            0 steps them after every model step.
        joint_encoder: one encoder of ``(y, x, t)`` whose output is split into the three blocks (the
            authors' notebook) instead of one encoder per block.
        classifier_reads_tx: the treatment classifier reads ``[z_t, z_tx]`` as in the paper's
            ``f_ct``; by default it reads ``z_t`` only, because reading ``z_tx`` pulls treatment
            content into the interaction block (on the interaction simulator, median z_tx MCC over
            3 seeds 0.58 with it, 0.75 without).

    Latents go to ``obsm["X_fcr_x"]``, ``["X_fcr_tx"]``, ``["X_fcr_t"]``; ``predict`` redraws ``z_t``
    and ``z_tx`` from their priors under the target condition (``counterfactual="shift"``: shifts the
    cell's posterior by the difference of the prior means instead).

    With ``treatment_features`` in the setup, the priors embed each treatment from its features
    (:mod:`fcrkit.components.treatments`), so ``predict`` also takes a treatment no training cell received.
    """

    build_spec = staticmethod(fcr_spec)
