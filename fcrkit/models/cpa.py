"""CPA: the Compositional Perturbation Autoencoder (Lotfollahi et al., Mol Syst Biol 2023) from fcrkit's parts.

One latent block, the *basal* state, inferred from the expression alone; the decoder adds the
treatment's embedding at its dose and the covariates' embeddings (decoder ``additive_embedding``)::

    q(z_basal | y)        p(z_basal) = N(0, I)
    z = z_basal + Σ_d f_d(dose_d) · e_d + Σ_k E_k[x_k]        y ~ likelihood(MLP(z), library)

and adversarial classifiers of ``t`` and ``x`` on ``z_basal`` (regulariser ``adversarial_classifier``)
that the encoder learns to fool, so the basal state carries neither. CPA has a deterministic and a
variational variant; this is the variational one (a Gaussian posterior and a standard normal prior)
with a small KL weight (``kl_weight``, default 0.3), which keeps the basal state close to CPA's
deterministic code while giving it a prior; ``kl_weight=0`` approaches the deterministic variant. On
Kang (a held-out cell type, 20 epochs, seeds 0 / 1) KL weights 0.1, 0.3 and 1 gave R² over the top-50
DEGs of −0.81 / −1.11, 0.10 / −1.21 and 0.34 / −1.16: the seed matters more than the weight.

Departures from CPA, each measured (see docs/recipes/cpa.md): the dose-response curves are monotone
and normalised to 1 at a reference dose; the adversaries read the basal state standardised over the
minibatch; the encoder has no dropout; the schedule is the trainer's, ``adversary_steps`` adversary
steps on each minibatch after each model step (CPA alternates: 2 adversary steps, then 1 model step,
on successive minibatches).

``predict`` is the generic one: the controls are encoded to ``z_basal`` (posterior means) and decoded
with the target treatment, dose and the cells' own covariates, each cell with its library size.
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


def cpa_spec(
    likelihood: str = "nb",
    n_latent: int = 32,
    adversary_weight: float = 100.0,
    kl_weight: float = 0.3,
    *,
    covariates: bool = True,
    dose_response: str = "sigmoid",
    penalty: float = 3.0,
    fool: str = "neg_ce",
    n_hidden: int = 128,
    n_layers: int = 2,
    norm: str = "layer",
    adversary_hidden: int = 64,
    adversary_layers: int = 2,
    adversary_lr: float = 3e-3,
    adversary_steps: int = 3,
    adversary_warmup_epochs: float = 5,
    kl_warmup_epochs: float = 5,
) -> ModelSpec:
    """The CPA spec; see :class:`CPA` for the arguments."""
    check_latent_size(n_latent, "n_latent")
    adversary_weight = check_weight(adversary_weight, "adversary_weight")
    kl_weight = check_weight(kl_weight, "kl_weight")
    conditions = ("x", "t") if covariates else ("t",)
    # no dropout: the adversaries see training-mode latents, and with dropout the encoder learns to hide the
    # treatment under the dropout noise, where it reappears at evaluation (on Kang, a fresh classifier told
    # CTRL from STIM from the basal state 0.58 of the time in training mode and 0.95 in evaluation mode)
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers, "norm": norm, "dropout": 0.0}
    terms = [RegularizerSpec("kl", kl_weight, kl_warmup_epochs)]
    if adversary_weight > 0:
        adversary = {"blocks": ["basal"], "labels": list(conditions), "penalty": penalty, "fool": fool,
                     "n_hidden": adversary_hidden, "n_layers": adversary_layers, "adversary_lr": adversary_lr,
                     "adversary_steps": adversary_steps}
        terms.append(RegularizerSpec("adversarial_classifier", adversary_weight, adversary_warmup_epochs, adversary,
                                     key="adversary"))
    return ModelSpec(
        name="cpa",
        blocks=(BlockSpec("basal", n_latent, encoder=ComponentSpec("mlp", (), mlp)),),
        decoder=ComponentSpec("additive_embedding", conditions, {**mlp, "dose_response": dose_response}),
        likelihood=ComponentSpec(likelihood),
        regularizers=tuple(terms),
    )


class CPA(Recipe):
    """CPA: a basal latent plus treatment-at-dose and covariate embeddings, with adversaries (module doc).

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata` with a treatment (and, by default,
            covariates; a ``dose_key`` gives doses to the dose-response curves).
        seed: seed of the weight initialisation.

    Keyword Args:
        likelihood: ``"nb"``, ``"zinb"``, ``"poisson"`` (counts) or ``"gaussian"`` (log-normalised).
        n_latent: size of the basal state (and of the embeddings).
        adversary_weight: weight of the model's ``−CE`` term (0: no adversaries). The ELBO is summed
            over genes, so it is larger than CPA's ``reg_adversary``, whose loss averages over genes.
        fool: the model's term: ``"neg_ce"`` (CPA's ``−CE``) or ``"marginal"`` (the classifiers'
            cross-entropy against the minibatch's label frequencies, which the encoder minimises).
        kl_weight: weight of ``KL(q(z_basal | y) || N(0, I))`` (0 approaches deterministic CPA).
        covariates: embed the covariates ``x`` (and let the adversaries classify them); False for
            data set up without covariates.
        dose_response: ``"sigmoid"`` (CPA's log-sigmoid, monotone), ``"mlp"`` (a monotone MLP) or
            ``"linear"``; one curve per treatment.
        penalty: the adversaries' gradient penalty (CPA's ``penalty_adversary``).
        n_hidden, n_layers: encoder and decoder MLPs.
        norm: their normalisation, ``"layer"`` by default: with ``"batch"`` the running statistics lag
            behind a basal state that the adversaries keep moving (in one Kang run, 20 epochs, the
            controls' reconstruction R² in evaluation mode was 0.46 with ``"batch"``, 0.99 with ``"layer"``).
        adversary_hidden, adversary_layers, adversary_lr: the classifiers.
        adversary_steps: adversary steps per model step, on the same minibatch (CPA alternates over
            minibatches, two adversary steps for each autoencoder step).
        adversary_warmup_epochs, kl_warmup_epochs: linear warm-up of the two weights.

    The basal state goes to ``obsm["X_cpa"]``; ``predict(controls, treatment, dose)`` decodes the
    controls' basal states with the target treatment at ``dose``. With ``treatment_features`` in the
    setup, each treatment's embedding is a function of its features, so an unseen treatment has one too.
    """

    build_spec = staticmethod(cpa_spec)
