"""sVAE and sVAE+ (Lopez et al., CLeaR 2023, "Learning causal representations of single cells via
sparse mechanism shift modeling") from fcrkit's parts.

One per-cell latent block ``z`` with the ``sparse_shift`` prior ``N(γ_a ⊙ μ_a, I)``, and the masks
``γ`` as a *global* block ``mask`` (``plate = "t"``: one mask per treatment, as in the paper, not one
per cell) with a ``relaxed_bernoulli`` posterior (straight-through 0/1 draws, logits started at
``init_log_alpha``; sVAE: τ = 0.5, and while training the cells' prior sees an independent draw of
each mask per (cell, treatment) entry, ``mask_draws = "per_entry"``, a lower-variance estimate of the
same objective); the encoder ``q(z | y)`` and the decoder do not see the treatment (it reaches the model
through the prior only); NB (or any count) likelihood with the observed library size.
sVAE adds the ``mask_sparsity`` term on the masks' probabilities; sVAE+ gives the masks a
Beta-Bernoulli prior whose Beta(1, K) hyperprior is a real site (a global block ``mask_probs``).

**Unseen treatments.** The treatment vocabulary is fixed when the data are set up, so set up the
*whole* data set (seen and new treatments) once, build the model on the cells of the seen
treatments (``adata[seen].copy()`` keeps the setup, hence every treatment's row of ``μ`` and of the
mask) and train it; the new treatments' rows stay unused (``μ = 0``: a standard normal prior for
their cells) until :meth:`SVAE.transfer` fits them on their own cells.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import torch
from anndata import AnnData

from fcrkit.components.sparse_shift import SparseShift
from fcrkit.data.anndata import split_treatment
from fcrkit.errors import ConfigError, DataError, did_you_mean, listing
from fcrkit.models.base import Recipe
from fcrkit.spec import BlockSpec, ComponentSpec, ModelSpec, RegularizerSpec, check_latent_size
from fcrkit.train.trainer import History

#: Row name of the controls' shift (``learn_control=True``).
CONTROL_ROW = "control"
#: The global blocks of the masks and (sVAE+) of their probabilities.
MASK, MASK_PROBS = "mask", "mask_probs"


def svae_spec(
    likelihood: str = "nb",
    n_latent: int = 15,
    plus: bool = False,
    sparsity: float = 10.0,
    K: float = 4.0,
    kl_warmup_epochs: float = 50,
    *,
    n_hidden: int = 128,
    n_layers: int = 2,
    dropout_rate: float = 0.1,
    learn_control: bool = False,
    init_log_alpha: float = 5.0,
    temperature: float | None = None,
    sparsity_start_epoch: float | None = None,
    mask_draws: str | None = None,
) -> ModelSpec:
    """The sVAE spec; see :class:`SVAE` for the arguments."""
    check_latent_size(n_latent, "n_latent")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or sparsity < 0:
        raise ConfigError(f"sparsity={sparsity!r} must be a non-negative number (0: no sparsity term).")
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers}
    encoder = ComponentSpec("mlp", (), {**mlp, "dropout": dropout_rate})
    start = kl_warmup_epochs if sparsity_start_epoch is None else sparsity_start_epoch
    # the defaults that recovered the targets best (docs/recipes/svae.md): sVAE per-entry draws at τ = 0.5,
    # sVAE+ (whose masks' own terms are weighted) one draw per step at τ = 1
    if temperature is None:
        temperature = 1.0 if plus else 0.5
    if mask_draws is None:
        mask_draws = "site" if plus else "per_entry"
    # one mask per treatment: a global block, relaxed Bernoulli with straight-through 0/1 draws
    mask_posterior = ComponentSpec("relaxed_bernoulli", (), {"temperature": temperature, "init_logit": init_log_alpha})
    blocks = []
    if plus:  # sVAE+: the masks' probabilities are a real site with the Beta(1, K) hyperprior (MAP: a point mass)
        blocks.append(BlockSpec(MASK_PROBS, n_latent, plate="t",
                                prior=ComponentSpec("beta", (), {"concentration1": 1.0, "concentration0": K}),
                                posterior=ComponentSpec("delta", (), {"support": "unit_interval"})))
        mask_prior = ComponentSpec("bernoulli", (MASK_PROBS,), {"temperature": temperature})
    else:  # sVAE: an uninformative prior on the masks; the sparsity is the mask_sparsity term
        mask_prior = ComponentSpec("bernoulli", (), {"probs": 0.5, "temperature": temperature})
    blocks.append(BlockSpec(MASK, n_latent, plate="t", prior=mask_prior, posterior=mask_posterior, draws=mask_draws))
    prior = ComponentSpec("sparse_shift", ("t", MASK), {"mask": MASK, "learn_control": learn_control})
    blocks.append(BlockSpec("z", n_latent, prior=prior, encoder=encoder))
    terms = [RegularizerSpec("kl", 1.0, kl_warmup_epochs)]  # the per-cell block's KL
    if plus and sparsity > 0:
        # λ (K - 1) weighs the global sites' terms (the masks' and the hyperprior's) from the start epoch: the
        # relaxed masks' KL pulls a logit with a slope of at most 1 per entry, where the Beta(1, K) density on
        # the probabilities that sVAE+ penalised pulls with (K - 1) σ(logit): the same pressure at saturation
        terms.append(RegularizerSpec("kl", sparsity * max(K - 1.0, 0.0), 0.0, {"blocks": [MASK, MASK_PROBS]},
                                     key="mask_prior", start_epoch=start))
    elif not plus:
        # sVAE's objective has no term for the masks' distribution (their logits are parameters): the mask
        # site's prior and entropy terms are weighted 0, the sparsity is mask_sparsity's λ · mean σ(logit)
        terms.append(RegularizerSpec("kl", 0.0, 0.0, {"blocks": [MASK]}, key="mask_prior"))
        if sparsity > 0:
            terms.append(RegularizerSpec("mask_sparsity", sparsity, 0.0, {"blocks": [MASK]}, start_epoch=start))
    return ModelSpec(
        name="svae",
        blocks=tuple(blocks),
        decoder=ComponentSpec("mlp", (), mlp),
        likelihood=ComponentSpec(likelihood),
        regularizers=tuple(terms),
    )


class SVAE(Recipe):
    """sVAE / sVAE+: a VAE whose prior shifts a sparse set of latents per treatment (see the module doc).

    Objective per cell (negative): ``−E_q[log p(y | z, γ)] + w · KL(q(z | y) || N(γ_a ⊙ μ_a, I))`` plus
    the masks' global terms divided by the number of training cells N (``KL(q(γ) || p(γ))``, the
    masks being one global draw per step), plus ``λ · mean σ(logit γ)`` (sVAE; from epoch
    ``sparsity_start_epoch``). sVAE+: ``p(γ | π) = Bernoulli(π)``, ``π ~ Beta(1, K)`` a real site
    (MAP), and ``λ`` weighs the masks' and the hyperprior's terms from epoch ``sparsity_start_epoch``
    (before it they are weighted 0). ``w`` is warmed up linearly over ``kl_warmup_epochs``. See
    ``docs/recipes/svae.md``.

    Args:
        adata: counts registered with :func:`fcrkit.setup_anndata` with a ``treatment_key``.
        seed: seed of the weight initialisation.

    Keyword Args:
        likelihood: ``"nb"`` (sVAE's), ``"zinb"`` or ``"poisson"``.
        n_latent: latent dimension.
        plus: sVAE+ (a Beta(1, K) hyperprior on the mask probabilities, a real site) instead of sVAE's
            mean penalty.
        sparsity: λ, the weight of the sparsity term (sVAE), or of the masks' global terms (sVAE+);
            0: no term (sVAE) or the unweighted Beta-Bernoulli prior, on from the start (sVAE+).
        K: the Beta(1, K) parameter of sVAE+ (``K = 1`` exerts no pressure; the global terms are
            divided by the number of training cells N, so a larger data set needs a larger K or λ for
            the same pressure).
        kl_warmup_epochs: linear KL warm-up (sVAE: 50 on simulations, 10 on real data).
        n_hidden, n_layers, dropout_rate: encoder and decoder MLPs (dropout in the encoder).
        learn_control: give controls a learned shift of their own, unmasked (sVAE's choice, where the
            control is one more label); by default their prior is N(0, I), which anchors the origin of
            the latent at the controls and recovers the targets better (see ``docs/recipes/svae.md``).
        init_log_alpha: initial mask logits (5: p ≈ 0.99).
        temperature: τ of the masks' relaxed Bernoulli (posterior and prior); default 0.5 (sVAE), 1 (sVAE+).
        sparsity_start_epoch: no sparsity term before this epoch (default ``kl_warmup_epochs``). Adam
            moves the mask logits at the speed of its learning rate whatever the term's weight, so a
            term that is on from the start prunes the masks while every shift ``μ`` is still 0, and a
            mask at 0 passes no gradient to its ``μ``: it never comes back (see ``docs/recipes/svae.md``).
        mask_draws: how the cells' prior sees the masks while training: ``"per_entry"`` (sVAE's
            default) an independent draw of ``q(γ_a)`` for each (cell, treatment) entry of the
            minibatch (local reparameterisation: the same objective as the one global draw, with a
            lower-variance gradient for the logits), ``"site"`` (sVAE+'s default) the mask block's one
            draw per step. The masks stay one global latent per treatment either way (see
            ``BlockSpec.draws``).

    The latent goes to ``obsm["X_svae"]``; :meth:`mask_probabilities` and :meth:`learned_targets` give
    the masks per treatment, :meth:`transfer` fits treatments unseen in training, and
    :func:`fcrkit.metrics.likelihood_table` scores held-out cells per treatment.
    """

    build_spec = staticmethod(svae_spec)

    # -- the masks ----------------------------------------------------------------------------------------
    @property
    def prior(self) -> SparseShift:
        """The ``sparse_shift`` prior of the latent block (the shifts ``μ``)."""
        return self.module.priors["z"]

    @property
    def row_names(self) -> list[str]:
        """Names of the shifts' rows: the treatments, then ``"control"`` with ``learn_control``."""
        return list(self.setup.treatments) + ([CONTROL_ROW] if self.prior.learn_control else [])

    def _frame(self, values: torch.Tensor, rows: Sequence[str]) -> pd.DataFrame:
        columns = [f"z_{j}" for j in range(values.shape[1])]
        return pd.DataFrame(values.detach().cpu().numpy(), index=pd.Index(list(rows), name="treatment"),
                            columns=columns)

    @property
    def is_binarized(self) -> bool:
        """Whether the masks are fixed to 0/1 values (:meth:`binarize`, done by :meth:`transfer`)."""
        return bool(self.module.globals[MASK].is_fixed)

    def mask_probabilities(self) -> pd.DataFrame:
        """``σ(logit γ)`` per treatment (rows) and latent dimension (columns ``z_0 ...``): the posterior
        probabilities of the global mask block (``get_global_latent("mask", value="loc")``).

        After :meth:`binarize` (and :meth:`transfer`) the entries are the fixed 0/1 masks.
        """
        return self._frame(self.module.global_moments(MASK)["loc"], self.setup.treatments)

    def learned_targets(self, threshold: float = 0.5) -> pd.DataFrame:
        """The latent dimensions each treatment shifts: ``mask_probabilities() > threshold`` as 0/1 ints."""
        return (self.mask_probabilities() > threshold).astype(int)

    def shifts(self) -> pd.DataFrame:
        """The learned mean shifts ``μ_a`` per treatment (before masking)."""
        return self._frame(self.prior.mean, self.row_names)

    @torch.no_grad()
    def binarize(self, threshold: float = 0.5) -> pd.DataFrame:
        """Fix every mask to ``σ(logit γ) > threshold`` (train and eval alike: the masks are no longer sites);
        the global blocks of sVAE+'s hyperprior are fixed at their point too. Returns the masks."""
        if not self.is_binarized:
            mask = (self.module.global_moments(MASK)["loc"] > threshold).float()
            for name in self.module.globals:
                if name != MASK:
                    self.module.fix_global(name, self.module.global_point(name))
            self.module.fix_global(MASK, mask)
        return self.mask_probabilities()

    # -- transfer to unseen treatments --------------------------------------------------------------------
    def transfer(
        self,
        adata_new: AnnData,
        new_treatments: Sequence[str] | None = None,
        *,
        retrain_epochs: int = 50,
        max_epochs: int = 100,
        lr: float = 1e-3,
        fit_lr: float = 5e-3,
        batch_size: int = 128,
        seed: int | None = None,
        accelerator: str = "auto",
        **settings: Any,
    ) -> dict[str, History]:
        """sVAE's transfer protocol to treatments unseen in training (the model is stage 1, fitted).

        Stage 2: binarise every mask (``σ(log_alpha) > 0.5``, fixed from now on); the new treatments
        get all-ones masks and ``μ = 0``; retrain the whole model on the training cells
        (``self.adata``) for ``retrain_epochs`` epochs, without the sparsity term and without KL
        warm-up. Stage 3: freeze the encoder, the decoder and the likelihood's dispersion (and the
        other treatments' shifts) and fit only ``μ`` of the new treatments on the cells of
        ``adata_new`` for ``max_epochs`` epochs at ``fit_lr``; the frozen networks run in evaluation
        mode (no dropout, batch norm with the running statistics of the training cells). Afterwards
        every parameter is trainable again; the masks stay binarised.

        Args:
            adata_new: cells of the new treatments (keep some aside to evaluate on), set up like
                the training data (a subset of the same set-up AnnData).
            new_treatments: treatments to transfer to (default: those of ``adata_new`` that have no
                cell in the training data).
            retrain_epochs: epochs of stage 2 (0 skips the retraining).
            max_epochs: epochs of stage 3 (0 stops after stage 2).
            lr: learning rate of stage 2.
            fit_lr: learning rate of stage 3.
            batch_size: as for :meth:`train` (both stages).
            seed: as for :meth:`train` (both stages).
            accelerator: as for :meth:`train` (both stages).
            **settings: as for :meth:`train` (both stages).

        Returns:
            ``{"retrain": History, "fit": History}`` (also kept in ``self.transfer_history``).
        """
        rows = self._new_rows(adata_new, new_treatments)
        self.binarize()
        mask = self.module.globals[MASK].fixed_value.clone()
        mask[rows] = 1.0  # new treatments: all-ones masks
        self.module.fix_global(MASK, mask)
        self.prior.add_treatments(rows)
        history: dict[str, History] = {}
        with self._without_sparsity_and_warmup():
            if retrain_epochs > 0:
                history["retrain"] = self.train(retrain_epochs, batch_size=batch_size, lr=lr, seed=seed,
                                                accelerator=accelerator, **settings)
            if max_epochs > 0:
                with self._only_new_shifts(rows), self._bound_to(adata_new):
                    history["fit"] = self.train(max_epochs, batch_size=batch_size, lr=fit_lr, seed=seed,
                                                accelerator=accelerator, **settings)
        self.transfer_history = history
        return history

    def _new_rows(self, adata_new: AnnData, new_treatments: Sequence[str] | None) -> list[int]:
        key = self.setup.treatment_key
        if key not in adata_new.obs:
            raise DataError(f"transfer(): adata_new has no treatment column {key!r}.")

        def parts(obs: pd.DataFrame) -> set[str]:
            labels = pd.unique(obs[key].astype(str))
            return {p for label in labels for p in split_treatment(label, key)} - {self.setup.control_value}

        seen = parts(self.adata.obs)
        if new_treatments is None:
            new_treatments = sorted(parts(adata_new.obs) - seen)
            if not new_treatments:
                raise DataError("transfer(): every treatment of adata_new has cells in the training data; "
                                "name the treatments to transfer to with new_treatments=.")
        elif isinstance(new_treatments, str):
            new_treatments = [new_treatments]
        known = list(self.setup.treatments)
        unknown = [t for t in new_treatments if t not in known]
        if unknown:
            raise DataError(f"transfer(): {listing(unknown)} is not a treatment of the data's setup (set up the "
                            "whole data set, new treatments included, before building the model)."
                            f"{did_you_mean(unknown[0], known)}")
        trained = sorted(set(new_treatments) & seen)
        if trained:
            raise DataError(f"transfer(): new treatment(s) {listing(trained)} have cells in the training data; "
                            "build the model on the cells of the seen treatments only.")
        return [known.index(t) for t in new_treatments]

    @contextlib.contextmanager
    def _without_sparsity_and_warmup(self) -> Iterator[None]:
        """The spec with the sparsity term's weight at 0 and no warm-up, while the block runs."""
        spec = self.module.spec
        terms = tuple(dataclasses.replace(r, weight=0.0 if r.name == "mask_sparsity" else r.weight,
                                          warmup_epochs=0.0, start_epoch=0.0) for r in spec.regularizers)
        self.module.spec = dataclasses.replace(spec, regularizers=terms)
        try:
            yield
        finally:
            self.module.spec = spec

    @contextlib.contextmanager
    def _only_new_shifts(self, rows: Sequence[int]) -> Iterator[None]:
        """Only the rows ``rows`` of ``μ`` learn while the block runs; batch norm statistics stay put."""
        mean = self.prior.mean
        trainable = {name: p.requires_grad for name, p in self.module.named_parameters()}
        for p in self.module.parameters():
            p.requires_grad_(p is mean)
        keep = torch.zeros(mean.shape[0], 1, device=mean.device, dtype=mean.dtype)
        keep[list(rows)] = 1.0
        hook = mean.register_hook(lambda grad: grad * keep.to(grad.device))
        # the frozen networks stay in evaluation mode (no dropout; batch norm with its running statistics,
        # not those of batches of new-treatment cells), although the trainer puts the model in training mode
        frozen = [m for name, m in self.module.named_modules()
                  if name.split(".")[0] in ("encoders", "decoder", "likelihood")]
        for m in frozen:
            m.eval()
            m.train = _stay_in_eval.__get__(m)
        try:
            yield
        finally:
            hook.remove()
            for m in frozen:
                del m.train
            for name, p in self.module.named_parameters():
                p.requires_grad_(trainable[name])

    @contextlib.contextmanager
    def _bound_to(self, adata: AnnData) -> Iterator[None]:
        """Train on ``adata`` instead of the model's data while the block runs."""
        from fcrkit.models.base import _check_adata, check_genes

        _check_adata(adata, "adata_new")
        check_genes(self.var_names, adata)
        self._check_new_cells(adata)  # trained on as the model's own cells were: the same checks
        previous = self.adata
        self.adata = adata
        try:
            yield
        finally:
            self.adata = previous


def _stay_in_eval(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """A module's ``train`` that leaves it in evaluation mode (while :meth:`SVAE.transfer` freezes it)."""
    return self
