"""Reference answers with the recipes' surface: ``NoChange``, ``PerturbedMean``, ``Additive``, ``LinearRidge``.

The field has learned that simple answers often match deep models on perturbation-response prediction
(Ahlmann-Eltze, Huber & Anders, Nat Methods 2025; Systema, Nat Biotechnol 2025), so every table
should carry them. Each baseline is built, trained and asked like a recipe::

    baseline = fcrkit.models.Additive(adata)       # adata set up with fcrkit.setup_anndata
    baseline.train()                                # no required arguments (training settings are ignored)
    pred = baseline.predict(controls_of_x, treatment="drugA")   # AnnData on the data's scale

**Profiles.** A baseline works with one vector per group of cells (a *profile*), in the space the
metrics use: for counts, ``log1p`` of the mean library-normalised expression (mean first, then log;
:func:`fcrkit.metrics.mean_log_expression`, ``target_sum=1e4``); for real-valued (e.g. already
log-normalised) data, the plain mean. A *group* is a combination of the covariate values
(``covariate_keys`` of the setup; one group without covariates). The training profiles are those of
each (group, treatment) of the training cells; ``ctrl[g]`` is the profile of the controls of group ``g``.

**Predictions.** Each input cell gets its group's predicted profile ``p``, put back on the data's
scale: for counts, expected counts ``library * e / sum(e)`` with ``e = expm1(max(p, 0))`` and the cell's
own library size (normalised expression sums to the library by construction, which a sum of changes
does not respect, so the profile is projected back onto that constraint, as the ``lognorm_gaussian``
likelihood does; :func:`~fcrkit.metrics.mean_log_expression` of the prediction is then
``log1p(1e4 * e / sum(e))``, which is ``p`` when ``e`` sums to 1e4, as for a group's own controls);
for real-valued data, ``p`` itself. ``sample=True`` draws Poisson counts around those
expected counts (a baseline has no likelihood of its own). Doses are pooled: only ``dose=1`` can be
asked for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from fcrkit.data.anndata import COMBINATION_SEP, get_matrix, get_setup, split_treatment
from fcrkit.errors import ConfigError, DataError, did_you_mean, listing
from fcrkit.models.base import _check_adata, check_genes
from fcrkit.train.trainer import History

__all__ = ["Additive", "Baseline", "LinearRidge", "NoChange", "PerturbedMean", "baselines"]

Group = tuple[str, ...]


class Baseline:
    """Base of the reference answers: training profiles per (group, treatment), predictions on the data's scale.

    A subclass writes :meth:`_profile` (and may extend :meth:`_fit`). Args:
        adata: data set up with :func:`fcrkit.setup_anndata` (a ``treatment_key`` is required).
        target_sum: counts per cell after library normalisation (the metrics' 1e4).
        seed: unused (a baseline has no random initialisation); accepted for the recipes' surface.
    """

    def __init__(self, adata: AnnData, *, target_sum: float = 1e4, seed: int | None = None):
        _check_adata(adata)
        self.adata, self.setup = adata, get_setup(adata)
        if self.setup.treatment_key is None:
            raise ConfigError(f"{type(self).__name__} needs data set up with a treatment_key: it predicts treatments.")
        if not np.isfinite(target_sum) or target_sum <= 0:
            raise ConfigError(f"target_sum must be a positive number, got {target_sum!r}.")
        self.target_sum = float(target_sum)
        self.var_names = [str(v) for v in adata.var_names]
        self.counts = _is_counts(get_matrix(adata, self.setup.layer))
        self.history, self.is_trained = History(), False
        self.profiles: dict[tuple[Group, str], np.ndarray] = {}

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "untrained"
        return f"{type(self).__name__}({self.adata.n_obs} cells x {self.adata.n_vars} genes, {state})"

    # -- training --------------------------------------------------------------------------------------
    def train(self, **settings: Any) -> History:
        """Compute the training profiles (nothing is optimised).

        Any keyword (``max_epochs``, ``accelerator``, ``seed`` ...) is accepted and ignored, so one call
        trains recipes and baselines alike. Returns an empty :class:`~fcrkit.train.History` whose
        ``seconds`` is the time taken.
        """
        start = time.perf_counter()
        matrix = get_matrix(self.adata, self.setup.layer)
        groups = self.groups(self.adata.obs)
        treatments = self.canonical_treatments(self.adata.obs)
        rows: dict[tuple[Group, str], list[int]] = {}
        for i, key in enumerate(zip(groups, treatments)):
            rows.setdefault(key, []).append(i)
        self.profiles = {key: self.summarise(matrix[np.asarray(cells)]) for key, cells in sorted(rows.items())}
        perturbed = treatments != self.setup.control_value
        self.perturbed_profile = self.summarise(matrix[np.flatnonzero(perturbed)]) if perturbed.any() else None
        self._fit()
        self.is_trained = True
        self.history = History(seconds=time.perf_counter() - start)
        return self.history

    def _fit(self) -> None:
        """Anything beyond the profiles (LinearRidge's regression)."""

    def summarise(self, matrix: Any) -> np.ndarray:
        """The profile of a group of cells (see the module doc): mean-log for counts, the mean otherwise."""
        if self.counts:
            from fcrkit.metrics.prediction import mean_log_expression  # scipy.stats and sklearn: not at import

            return mean_log_expression(matrix, self.target_sum)
        return np.asarray(matrix.mean(axis=0), dtype=np.float64).ravel()

    def groups(self, obs: pd.DataFrame) -> list[Group]:
        """Each cell's tuple of covariate values (as strings; ``()`` without covariates)."""
        missing = [k for k in self.setup.covariate_keys if k not in obs.columns]
        if missing:
            raise DataError(f"covariate column(s) {listing(missing)} are not in obs (columns: {listing(obs.columns)}).")
        columns = [obs[k].astype(str).to_numpy() for k in self.setup.covariate_keys]
        return list(zip(*columns)) if columns else [()] * len(obs)

    def canonical_treatments(self, obs: pd.DataFrame) -> np.ndarray:
        """Each cell's treatment with the parts of a combination sorted and control parts dropped."""
        labels = obs[self.setup.treatment_key].astype(str).to_numpy()
        unique, codes = np.unique(labels, return_inverse=True)
        return np.array([self.canonical(label) for label in unique], dtype=object)[codes]

    def canonical(self, label: str) -> str:
        """``"B+A"`` -> ``"A+B"``; a label of controls only -> the control value."""
        parts = self.parts(label)
        return COMBINATION_SEP.join(parts) if parts else self.setup.control_value

    def parts(self, label: str) -> tuple[str, ...]:
        """The sorted non-control parts of a treatment label."""
        return tuple(sorted(p for p in split_treatment(label, self.setup.treatment_key)
                            if p != self.setup.control_value))

    def control(self, group: Group) -> np.ndarray:
        """``ctrl[g]``: the profile of the training controls of ``group``."""
        key = (group, self.setup.control_value)
        if key not in self.profiles:
            raise DataError(f"{type(self).__name__}: no training control cells with covariates {group!r}; the "
                            "prediction starts from a group's controls.")
        return self.profiles[key]

    def single_effects(self) -> dict[str, np.ndarray]:
        """Per single treatment, its mean change ``ctrl``-relative over the groups where it was seen with controls.

        ``Δ_t = mean over groups g with training cells of (g, t) and of (g, control) of [profile(g, t) - ctrl[g]]``.
        """
        control = self.setup.control_value
        effects: dict[str, list[np.ndarray]] = {}
        for (group, treatment), profile in self.profiles.items():
            if treatment != control and COMBINATION_SEP not in treatment and (group, control) in self.profiles:
                effects.setdefault(treatment, []).append(profile - self.profiles[(group, control)])
        return {t: np.mean(v, axis=0) for t, v in effects.items()}

    # -- prediction ------------------------------------------------------------------------------------
    def _profile(self, group: Group, parts: tuple[str, ...]) -> np.ndarray:
        """The predicted profile of cells of ``group`` under the treatment made of ``parts`` (non-empty)."""
        raise NotImplementedError

    def predict(self, adata: AnnData, treatment: str, dose: float | str = 1.0, *, sample: bool = False,
                seed: int | None = None, batch_size: int | None = None) -> AnnData:
        """The baseline's answer for the cells of ``adata`` (typically controls) under ``treatment``.

        Args:
            adata: the cells (same genes as the training data; their covariate columns decide the group).
            treatment: a treatment of the setup, or a combination ``"A+B"`` of them; the control value
                predicts the group's controls.
            dose: must be 1 (baselines pool the doses).
            sample: draw Poisson counts around the expected counts (count data only).
            seed: seed of those draws.
            batch_size: ignored (the recipes' surface).

        Returns:
            An AnnData of the same cells and genes, ``X`` on the data's scale (see the module doc); ``obs``
            and ``uns["fcrkit_prediction"]`` say the predicted condition.
        """
        if not self.is_trained:
            raise ConfigError(f"{type(self).__name__} is not trained; call .train() first.")
        _check_adata(adata)
        check_genes(self.var_names, adata)
        parts = self._check_target(treatment, dose)
        groups = self.groups(adata.obs)
        by_group = {g: (self._profile(g, parts) if parts else self.control(g)) for g in dict.fromkeys(groups)}
        profiles = np.stack([by_group[g] for g in groups])
        if self.counts:
            library = np.asarray(get_matrix(adata, self.setup.layer).sum(axis=1), dtype=np.float64).ravel()
            values = np.expm1(np.maximum(profiles, 0.0))
            values *= (library / np.maximum(values.sum(axis=1), np.finfo(np.float64).tiny))[:, None]
            if sample:
                values = np.random.default_rng(seed).poisson(values).astype(np.float64)
        elif sample:
            raise ConfigError(f"{type(self).__name__}.predict(sample=True) draws counts; these data are not counts.")
        else:
            values = profiles
        obs = adata.obs.copy()
        obs[self.setup.treatment_key] = str(treatment)
        obs["fcrkit_prediction"] = f"{treatment} (dose {dose})"
        result = AnnData(values.astype(np.float32), obs=obs, var=adata.var.copy())
        result.uns["fcrkit_prediction"] = {"treatment": str(treatment), "dose": str(dose),
                                           "model": type(self).__name__, "sampled": bool(sample)}
        return result

    def _check_target(self, treatment: Any, dose: Any) -> tuple[str, ...]:
        if not isinstance(treatment, str):
            raise ConfigError(f"predict(): treatment={treatment!r} must be a treatment label, a str ('A+B' for a "
                              "combination).")
        known = set(self.setup.treatments) | {self.setup.control_value}
        unknown = [p for p in split_treatment(treatment, self.setup.treatment_key) if p not in known]
        if unknown:
            raise DataError(f"predict(): {listing(unknown)} in treatment={treatment!r} is not a treatment of the "
                            f"setup (known: {listing(self.setup.treatments)}).{did_you_mean(unknown[0], known)}")
        if str(dose) not in ("1", "1.0"):
            raise ConfigError(f"predict(): dose={dose!r}; {type(self).__name__} pools the doses, so the dose "
                              "must be 1.")
        return self.parts(treatment)

    def get_latent_representation(self, adata: AnnData | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """A baseline has no latent: an empty dict (the recipes' surface)."""
        return {}


class NoChange(Baseline):
    """The cells' own controls: the profile of the training controls of each cell's group, whatever the treatment."""

    def _profile(self, group: Group, parts: tuple[str, ...]) -> np.ndarray:
        return self.control(group)


class PerturbedMean(Baseline):
    """Systema's reference: the profile of all perturbed training cells pooled (same for every group and treatment)."""

    def _profile(self, group: Group, parts: tuple[str, ...]) -> np.ndarray:
        if self.perturbed_profile is None:
            raise DataError("PerturbedMean: the training data hold no perturbed cells.")
        return self.perturbed_profile


class Additive(Baseline):
    """The group's controls plus the treatment's mean change where it was seen; a combination adds its parts'.

    ``prediction(g, A+B+...) = ctrl[g] + Δ_A + Δ_B + ...`` with ``Δ_t`` of :meth:`Baseline.single_effects`:
    the change of single treatment ``t`` (its profile minus the same group's controls) averaged over the
    training groups where ``t`` was seen. In covariate transfer the target (g, t) is held out, so ``Δ_t``
    comes from the other groups.
    """

    def _fit(self) -> None:
        self.effects = self.single_effects()

    def _profile(self, group: Group, parts: tuple[str, ...]) -> np.ndarray:
        unseen = [p for p in parts if p not in self.effects]
        if unseen:
            raise DataError(f"Additive: treatment(s) {listing(unseen)} never seen alone with controls of the same "
                            "group in training, so their change is unknown.")
        return self.control(group) + np.sum([self.effects[p] for p in parts], axis=0)


class LinearRidge(Baseline):
    """Ahlmann-Eltze, Huber & Anders (2025)'s linear model of the changes, ``D ≈ G W Pᵀ + b``.

    ``D`` (genes x training conditions) holds each treated training condition's change against its group's
    controls, ``profile(g, t) - ctrl[g]``; ``b`` is its row mean. ``G`` (genes x ``n_components``) is the
    gene embedding: the principal-component scores of the genes in ``D - b`` (genes as samples). ``P`` holds
    one row per training condition: the embedding of its treatment, the principal-component scores of the
    single treatments' mean changes (:meth:`Baseline.single_effects`, treatments as samples, centred);
    a combination's row is the sum of its parts' rows. ``W = (GᵀG + λI)⁻¹ Gᵀ (D - b) P (PᵀP + λI)⁻¹``
    (ridge on both sides, λ = ``ridge``). Prediction: ``ctrl[g] + b + G W P_tᵀ``.

    With ``treatment_features`` in the setup (:func:`fcrkit.setup_anndata`), ``P``'s rows are instead the
    treatments' features, centred on the mean row of the single treatments seen in training (the paper's
    "supplied embedding"): every treatment with a feature row then has an embedding, seen in training or
    not, so the model predicts unseen treatments.

    Args:
        adata: set-up data.
        n_components: PCA dimensions of both embeddings (the paper's 10); fewer when the data have fewer.
        ridge: the ridge penalty λ (the paper's 0.1).
        use_features: take ``P`` from the setup's treatment features when it has them (False: always
            from the training changes).
    """

    def __init__(self, adata: AnnData, *, n_components: int = 10, ridge: float = 0.1, use_features: bool = True,
                 target_sum: float = 1e4, seed: int | None = None):
        super().__init__(adata, target_sum=target_sum, seed=seed)
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
            raise ConfigError(f"LinearRidge: n_components={n_components!r} must be a positive integer.")
        if not np.isfinite(ridge) or ridge < 0:
            raise ConfigError(f"LinearRidge: ridge={ridge!r} must be a non-negative number.")
        self.n_components, self.ridge = int(n_components), float(ridge)
        self.use_features = bool(use_features) and self.setup.treatment_features is not None

    def _fit(self) -> None:
        effects = self.single_effects()
        if not effects:
            raise DataError("LinearRidge: no treatment was seen alone with controls of the same group in training.")
        names = sorted(effects)
        if self.use_features:  # the supplied embedding: every treatment with a feature row has one
            features = self.setup.treatment_features
            rows = features.matrix(features.names)
            centre = features.matrix(names).mean(0)
            self.embedding = dict(zip(features.names, rows - centre))
        else:
            singles = np.stack([effects[t] for t in names])
            self.embedding = dict(zip(names, _pc_scores(singles - singles.mean(0), self.n_components)))
        control = self.setup.control_value
        columns = [(g, t) for (g, t) in self.profiles if t != control and (g, control) in self.profiles
                   and all(p in self.embedding for p in t.split(COMBINATION_SEP))]
        changes = np.stack([self.profiles[c] - self.profiles[(c[0], control)] for c in columns], axis=1)
        self.offset = changes.mean(axis=1)
        centred = changes - self.offset[:, None]
        self.gene_embedding = _pc_scores(centred, self.n_components)
        pert = np.stack([self._embed(tuple(t.split(COMBINATION_SEP))) for _, t in columns])
        self.weights = ridge_solve(centred, self.gene_embedding, pert, self.ridge)

    def _embed(self, parts: tuple[str, ...]) -> np.ndarray:
        unseen = [p for p in parts if p not in self.embedding]
        if unseen:
            raise DataError(f"LinearRidge: treatment(s) {listing(unseen)} have no embedding (never seen alone with "
                            "controls of the same group in training).")
        return np.sum([self.embedding[p] for p in parts], axis=0)

    def _profile(self, group: Group, parts: tuple[str, ...]) -> np.ndarray:
        return self.control(group) + self.offset + self.gene_embedding @ self.weights @ self._embed(parts)


def _pc_scores(matrix: np.ndarray, n_components: int) -> np.ndarray:
    """Principal-component scores of the rows of an already centred matrix, ``U_k S_k`` (thin SVD)."""
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    k = min(n_components, len(s))
    return u[:, :k] * s[:k]


def ridge_solve(y: np.ndarray, g: np.ndarray, p: np.ndarray, ridge: float) -> np.ndarray:
    """``W`` minimising ``||Y - G W Pᵀ||² `` with ridge λ on both sides (Ahlmann-Eltze's ``solve_y_axb``).

    ``W = (GᵀG + λI)⁻¹ Gᵀ Y P (PᵀP + λI)⁻¹``; ``Y`` genes x conditions, ``G`` genes x k, ``P`` conditions x l.
    With λ = 0 a pseudo-inverse is used, so rank-deficient embeddings still give the least-squares fit.
    """
    if ridge == 0:
        return np.linalg.pinv(g) @ y @ np.linalg.pinv(p.T)
    left = np.linalg.solve(g.T @ g + ridge * np.eye(g.shape[1]), g.T @ y @ p)
    return np.linalg.solve(p.T @ p + ridge * np.eye(p.shape[1]), left.T).T


def _is_counts(matrix: Any) -> bool:
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    return bool(np.all(values >= 0) and np.all(values == np.floor(values)))


def baselines() -> Mapping[str, type[Baseline]]:
    """The baselines by class name (what ``fcrkit benchmark`` runs besides the recipes)."""
    return {cls.__name__: cls for cls in (NoChange, PerturbedMean, Additive, LinearRidge)}
