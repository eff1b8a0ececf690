"""SAMS-VAE (Bereket & Karaletsos, NeurIPS 2023, "Modelling cellular perturbations with the sparse additive
mechanism shift variational autoencoder") from fcrkit's parts.

Generative model, with ``d_cp`` the dose of perturbation ``p`` in cell ``c`` (0 for the others)::

    e_p ~ N(0, I)                 one embedding per perturbation  (global block "embedding", plate "t")
    m_p ~ Bernoulli(π)^d          one mask per perturbation       (global block "mask", plate "t")
    z_basal ~ N(0, I)             per cell                        (block "z")
    z = z_basal + Σ_p d_cp (m_p ⊙ e_p)                            (the ``sparse_additive`` combiner)
    y ~ NB(library · softmax(f(z)), θ)

The mask prior is a relaxed Bernoulli at the posterior's temperature, so that prior and posterior are
scored at the same relaxed value of the straight-through draw. Guides: ``q(e_p)`` a diagonal Normal and
``q(m_p)`` a relaxed Bernoulli (straight-through: the forward draw is 0/1) with parameters of their own,
and the basal encoder, either

* ``"mean_field"``: ``q(z_basal | y)`` (the ``mlp`` encoder), or
* ``"correlated"``: ``q(z_basal | y, s_c)`` with the cell's shift ``s_c = Σ_p d_cp (m_p ⊙ e_p)`` (the
  ``basal_mlp`` encoder: it estimates ``z`` from ``[y, s_c]`` and subtracts ``s_c``).

Every part is a registered component; the global sites live in a plate over the treatments, so Pyro
does not rescale them by the minibatch subsampling. Combinations are predicted from their parts: a
control cell's basal latent plus its target's ``Σ_p d_p (m_p ⊙ e_p)``, decoded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from fcrkit.data.anndata import split_treatment
from fcrkit.errors import ConfigError, DataError, check_choice, listing
from fcrkit.models.base import Recipe
from fcrkit.spec import BlockSpec, ComponentSpec, ModelSpec, RegularizerSpec, check_latent_size, check_weight

#: The guides (variational families) of :class:`SAMSVAE`.
GUIDES = ("correlated", "mean_field")


def samsvae_spec(
    likelihood: str = "nb",
    n_latent: int = 10,
    guide: str = "correlated",
    mask_prior: float = 0.1,
    *,
    temperature: float = 0.5,
    init_mask_logit: float = 2.0,
    n_hidden: int = 128,
    n_layers: int = 1,
    dropout_rate: float = 0.0,
    kl_warmup_epochs: float = 0,
    mask_kl_weight: float = 1.0,
    mask_kl_warmup_epochs: float = 0,
) -> ModelSpec:
    """The SAMS-VAE spec; see :class:`SAMSVAE` for the arguments."""
    check_latent_size(n_latent, "n_latent")
    check_choice("guide", guide, GUIDES, owner="SAMSVAE")
    if isinstance(mask_prior, bool) or not isinstance(mask_prior, (int, float)) or not 0 < mask_prior < 1:
        raise ConfigError(f"mask_prior={mask_prior!r} must be a probability strictly between 0 and 1 (the prior "
                          "probability that a perturbation shifts a latent dimension).")
    check_weight(kl_warmup_epochs, "kl_warmup_epochs")
    check_weight(mask_kl_weight, "mask_kl_weight")
    check_weight(mask_kl_warmup_epochs, "mask_kl_warmup_epochs")
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers}
    encoder_options = {**mlp, "dropout": dropout_rate}
    if guide == "correlated":
        encoder = ComponentSpec("basal_mlp", ("t", "embedding", "mask"),
                                {**encoder_options, "embedding": "embedding", "mask": "mask"})
    else:
        encoder = ComponentSpec("mlp", (), encoder_options)
    mask = BlockSpec("mask", n_latent, plate="t",
                     prior=ComponentSpec("bernoulli", (), {"probs": float(mask_prior), "temperature": temperature}),
                     posterior=ComponentSpec("relaxed_bernoulli", (), {"temperature": temperature,
                                                                       "init_logit": init_mask_logit}))
    terms = [RegularizerSpec("kl", 1.0, kl_warmup_epochs, {"blocks": ["z"]})] if kl_warmup_epochs else []
    if mask_kl_weight != 1.0 or mask_kl_warmup_epochs:  # the masks' KL reweighted (SAMS-VAE's plated priors)
        terms.append(RegularizerSpec("kl", mask_kl_weight, mask_kl_warmup_epochs, {"blocks": ["mask"]},
                                     key="mask_kl"))
    return ModelSpec(
        name="samsvae",
        blocks=(BlockSpec("z", n_latent, encoder=encoder), BlockSpec("embedding", n_latent, plate="t"), mask),
        decoder=ComponentSpec("mlp", (), mlp),
        likelihood=ComponentSpec(likelihood),
        combiner=ComponentSpec("sparse_additive", ("t", "embedding", "mask"),
                               {"basal": "z", "embedding": "embedding", "mask": "mask"}),
        regularizers=tuple(terms),
    )


class SAMSVAE(Recipe):
    """SAMS-VAE: a basal latent per cell plus sparse, additive per-perturbation shifts (see the module doc).

    Args:
        adata: counts registered with :func:`fcrkit.setup_anndata` with a ``treatment_key``
            (combinations written ``"A+B"``).
        seed: seed of the weight initialisation.

    Keyword Args:
        likelihood: ``"nb"`` (SAMS-VAE's), ``"zinb"`` or ``"poisson"``.
        n_latent: latent dimension ``d`` (of the basal latent, the embeddings and the masks).
        guide: ``"correlated"`` (the basal encoder sees the cell's sampled treatment shift) or
            ``"mean_field"``.
        mask_prior: π, the prior probability that a perturbation shifts a latent dimension.
        temperature: temperature of the relaxed Bernoulli masks (prior and posterior).
        init_mask_logit: where the mask logits start (2: masks start mostly on, σ(2) ≈ 0.88, so the
            embeddings receive gradients from the start).
        n_hidden, n_layers: width and depth of the encoder and decoder MLPs.
        dropout_rate: encoder dropout.
        kl_warmup_epochs: linear warm-up of the basal latent's KL (0: none).

    The basal latent goes to ``obsm["X_samsvae_z"]``; :meth:`learned_targets` says which latent
    dimensions each perturbation shifts, :meth:`embeddings` by how much, and :meth:`predict` predicts
    combinations never seen in training from their parts. See ``docs/recipes/samsvae.md``.
    """

    build_spec = staticmethod(samsvae_spec)

    def _frame(self, values: torch.Tensor) -> pd.DataFrame:
        columns = [f"z_{j}" for j in range(values.shape[1])]
        return pd.DataFrame(values.detach().cpu().numpy(), columns=columns,
                            index=pd.Index(list(self.setup.treatments), name="perturbation"))

    def mask_probabilities(self) -> pd.DataFrame:
        """``q(m_pj = 1)`` per perturbation (rows) and latent dimension (columns ``z_0 ...``)."""
        return self._frame(self.module.global_moments("mask")["loc"])

    def learned_targets(self, threshold: float = 0.5) -> pd.DataFrame:
        """The latent dimensions each perturbation shifts: ``mask_probabilities() > threshold``, booleans."""
        return self.mask_probabilities() > threshold

    def embeddings(self) -> pd.DataFrame:
        """The posterior mean of each perturbation's embedding ``e_p`` (before masking)."""
        return self._frame(self.module.global_moments("embedding")["loc"])

    def seen_perturbations(self) -> list[str]:
        """The perturbations with training cells, alone or in a combination (those :meth:`predict` knows)."""
        return sorted(self._trained_treatments() - {self.setup.control_value})

    def _check_target(self, treatment: str, dose: float | str) -> None:
        """The generic checks of a predict() target, then: every part of it has training cells (alone or in
        a combination), since an untrained part's embedding and mask are their priors', never learned.

        ``predict`` is :meth:`fcrkit.models.Model.predict`: each cell's basal latent (its posterior mean) is
        shifted by the target's ``Σ_p d_p (m_p ⊙ e_p)`` and decoded, so a combination never seen in
        training is predicted from its parts; ``global_draws=k`` averages over ``k`` joint posterior draws
        of the embeddings and masks (SAMS-VAE's posterior predictive).
        """
        super()._check_target(treatment, dose)
        seen = set(self.seen_perturbations())
        parts = [p for p in split_treatment(treatment, self.setup.treatment_key) if p != self.setup.control_value]
        unseen = [p for p in parts if p not in seen]
        if unseen:
            raise DataError(
                f"SAMSVAE.predict(): {listing(unseen)} in treatment={treatment!r} has no training cell, alone or in a "
                "combination, so its embedding and mask were never learned. Predict combinations of perturbations "
                f"seen in training ({len(seen)}: {listing(sorted(seen)[:5])}{' ...' if len(seen) > 5 else ''}), or "
                "train on cells that carry it.")

    def target_matrix(self) -> np.ndarray:
        """:meth:`learned_targets` as a ``(perturbations, n_latent)`` 0/1 array (for the metrics)."""
        return self.learned_targets().to_numpy().astype(np.int8)
