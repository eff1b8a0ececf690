"""scGen (Lotfollahi, Wolf & Theis, Nature Methods 2019) from fcrkit's parts.

A VAE of log-normalised expression with a standard normal prior; the encoder sees only the cell's
expression, the decoder only the latent::

    q(z | v)    p(z) = N(0, I)    v = log1p(y / library * 1e4) ~ N(decoder(z), diag σ²)

With counts, the ``lognorm_gaussian`` likelihood log-normalises on the way in (and its
``encoder_input`` makes the encoder see the same values) and gives expected counts back; with data
that are already log-normalised, ``likelihood="gaussian"`` models them as they are.

Prediction is latent arithmetic: ``δ = mean z(treated) − mean z(control)`` over the training cells
with the cell types balanced, and the controls are decoded from ``z + δ``.
"""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from fcrkit.errors import ConfigError, DataError, listing
from fcrkit.models.base import Recipe
from fcrkit.spec import (
    BlockSpec,
    ComponentSpec,
    ModelSpec,
    RegularizerSpec,
    check_latent_size,
    check_weight,
)

BALANCES = ("pooled", "paired")


def scgen_spec(n_latent: int = 100, n_hidden: int = 800, n_layers: int = 2, dropout: float = 0.2,
               beta: float = 0.005, kl_warmup_epochs: float = 0, likelihood: str = "lognorm_gaussian") -> ModelSpec:
    """The scGen spec; see :class:`ScGen` for the arguments."""
    check_latent_size(n_latent, "n_latent")
    beta = check_weight(beta, "beta")
    if likelihood not in ("lognorm_gaussian", "gaussian"):
        raise ConfigError(f"likelihood={likelihood!r}: scGen is a Gaussian model of log-normalised expression; use "
                          "'lognorm_gaussian' (counts in, log-normalised inside) or 'gaussian' (data already "
                          "log-normalised).")
    mlp = {"n_hidden": n_hidden, "n_layers": n_layers, "dropout": dropout}
    return ModelSpec(
        name="scgen",
        blocks=(BlockSpec("z", n_latent, encoder=ComponentSpec("mlp", (), mlp)),),
        decoder=ComponentSpec("mlp", (), mlp),
        likelihood=ComponentSpec(likelihood),
        regularizers=(RegularizerSpec("kl", weight=beta, warmup_epochs=kl_warmup_epochs),),
    )


class ScGen(Recipe):
    """scGen: a VAE of log-normalised expression, predicting by latent arithmetic.

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata` (a ``treatment_key`` for ``predict``;
            the first covariate key, e.g. the cell type, is what ``predict`` balances).
        seed: seed of the weight initialisation.

    Keyword Args:
        n_latent, n_hidden, n_layers, dropout: sizes of the latent and of the encoder and decoder MLPs
            (scGen's defaults: 100, 800, 2, 0.2).
        beta: weight of the KL. scGen weights it by 5e-5 against a squared error with unit variance;
            here the Gaussian learns a variance per gene (about 0.8 on Kang). On Kang 0.0005 and 0.005
            predicted alike and 0.05 worse (see docs/recipes/scgen.md).
        kl_warmup_epochs: linear warm-up of the KL.
        likelihood: ``"lognorm_gaussian"`` for counts (log-normalised inside, expected counts out) or
            ``"gaussian"`` for data that are already log-normalised (predictions stay log-normalised).

    The latent goes to ``obsm["X_scgen"]``.
    """

    build_spec = staticmethod(scgen_spec)

    @torch.no_grad()
    def latent_shift(self, treatment: str, *, balance: str = "pooled") -> np.ndarray:
        """``δ = mean z(treatment) − mean z(control)`` over the cells the model is bound to (posterior means).

        Cell types (the first covariate key) are balanced: ``balance="pooled"`` (scGen's) subtracts the
        mean of the control types' means from the mean of the treated types' means (what scGen's
        balancer, which resamples every type to the same size, computes; a type seen in one condition
        only, such as a held-out one, enters one side); ``"paired"`` averages the per-type differences
        over the types seen both treated and as controls. Without covariates, plain means.
        """
        if balance not in BALANCES:
            raise ConfigError(f"balance={balance!r} is not one of {listing(BALANCES)}.")
        setup, obs = self.setup, self.adata.obs
        z = self.get_latent_representation(self.adata, block="z")
        label = obs[setup.treatment_key].astype(str).to_numpy()
        treated, control = label == str(treatment), label == setup.control_value
        if not treated.any():
            raise DataError(f"no cell of the data the model is bound to has treatment {treatment!r}: scGen's "
                            "latent shift is learned from treated cells.")
        if not control.any():
            raise DataError(f"no cell of the data the model is bound to is a control ({setup.control_value!r}).")
        if not setup.covariate_keys:
            return z[treated].mean(0) - z[control].mean(0)
        kind = obs[setup.covariate_keys[0]].astype(str).to_numpy()

        def means(mask: np.ndarray) -> dict[str, np.ndarray]:
            return {k: z[mask & (kind == k)].mean(0) for k in np.unique(kind[mask])}

        on, off = means(treated), means(control)
        if balance == "pooled":
            return np.mean(list(on.values()), 0) - np.mean(list(off.values()), 0)
        both = sorted(set(on) & set(off))
        if not both:
            raise DataError(f"no {setup.covariate_keys[0]!r} level has both {treatment!r} and control cells; use "
                            "balance='pooled'.")
        return np.mean([on[k] - off[k] for k in both], 0)

    def predict(self, adata: AnnData, treatment: str, dose: float | str = 1.0, *, balance: str = "pooled",
                batch_size: int = 1024, seed: int | None = None, sample: bool = False) -> AnnData:
        """Expression of the cells of ``adata`` (controls) under ``treatment``: decode ``z + δ``.

        ``δ`` is :meth:`latent_shift` over the data the model is bound to (its training data, or the
        AnnData given to ``load``); ``z`` the posterior means of the cells of ``adata``. Returns an
        AnnData on the scale of the data (expected counts with each cell's library for counts).
        scGen has no doses: ``dose`` must be 1. ``sample=True`` draws from the likelihood instead of
        the expected counts, seeded by ``seed`` (otherwise the prediction is deterministic).
        """
        if self.setup.treatment_key is None:
            raise ConfigError("this model was set up without a treatment_key; it cannot predict a treatment.")
        self._check_target(treatment, dose)
        if str(dose) not in ("1", "1.0"):
            raise ConfigError(f"predict(): dose={dose!r}; scGen has no dose model, so the dose must be 1.")
        device = next(self.module.parameters()).device
        shift = torch.as_tensor(self.latent_shift(treatment, balance=balance), device=device)

        def decode(batch, labels):
            (loc, _), = self.module.encode(batch).values()
            return self.module.decode_mean({"z": loc + shift}, batch.labels, batch.library, sample=sample)

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed if seed is not None else 0)  # the likelihood's draws (sample=True)
            values = self._decode_cells(adata, decode, {}, batch_size)
        return self._prediction(adata, values, treatment, dose, {"method": "latent arithmetic", "balance": balance})
