"""Prediction tasks as reproducible splits: covariate transfer, combinations, unseen perturbations.

A task is a list of :class:`Split`: the cells removed from training, and the held-out conditions
(a covariate value under a treatment) to predict from that covariate value's controls. Every choice
is made from sorted candidates with ``numpy.random.default_rng(seed)``, so a task is a pure function of
the data's labels and the seed::

    splits = fcrkit.tasks.covariate_transfer(adata.obs, "label", "cell_type", treatment="STIM",
                                             control_value="CTRL", folds=True)      # each cell type in turn
    splits = fcrkit.tasks.combinations(adata.obs, "perturbation", "cell_line", n_doubles=5, seed=0)
    splits = fcrkit.tasks.unseen_perturbations(adata.obs, "perturbation", "cell_line", n_treatments=3)

* **covariate transfer**: the treated cells of chosen (covariate value, treatment) pairs are held out;
  the treatment stays in training through the other covariate values, and the value's controls stay too;
* **combinations**: every cell of chosen combinations (``A+B``) is held out, in every covariate value;
  their parts stay in training as singles;
* **unseen perturbations**: every cell of chosen treatments is held out, combinations containing them
  included, so the treatment is absent from training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fcrkit.data.anndata import COMBINATION_SEP
from fcrkit.errors import ConfigError, DataError, did_you_mean, listing
from fcrkit.runconfig import HoldOut

__all__ = ["TASKS", "Split", "combinations", "covariate_transfer", "unseen_perturbations"]


@dataclass(frozen=True)
class Split:
    """One split: the conditions predicted, and the treatments removed from training altogether.

    Attributes:
        name: a short description (for tables).
        hold_out: the held-out conditions (covariate ``key`` = ``value`` under ``treatment``); their cells are
            not trained on, and each is predicted from the controls of its covariate value.
        removed: treatments absent from training: every cell whose treatment contains all the parts of one of
            these (``"t"`` removes ``t`` and every combination with ``t``; ``"A+B"`` removes ``A+B`` and ``B+A``
            but not ``A`` or ``B``), whether or not it is predicted.
    """

    name: str
    hold_out: tuple[HoldOut, ...]
    removed: tuple[str, ...] = ()

    def held_out_mask(self, obs: pd.DataFrame, treatment_key: str) -> np.ndarray:
        """The cells that are not trained on (bool per cell of ``obs``)."""
        from fcrkit.workflow import hold_out_mask

        mask = hold_out_mask(obs, self.hold_out, treatment_key) if self.hold_out else np.zeros(len(obs), bool)
        if self.removed:
            parts = _parts(obs[treatment_key].astype(str).to_numpy())
            gone = [{q.strip() for q in r.split(COMBINATION_SEP)} for r in self.removed]
            mask |= np.array([any(g <= p for g in gone) for p in parts], dtype=bool)
        return mask


def _parts(labels: np.ndarray) -> list[set[str]]:
    unique, codes = np.unique(labels, return_inverse=True)
    sets = [{p.strip() for p in label.split(COMBINATION_SEP)} for label in unique]
    return [sets[c] for c in codes]


def _table(obs: pd.DataFrame, treatment_key: str, covariate_key: str) -> pd.DataFrame:
    """Cells per (covariate value, treatment label), as strings."""
    for key in (treatment_key, covariate_key):
        if key not in obs.columns:
            raise DataError(f"{key!r} is not an obs column.{did_you_mean(key, obs.columns)} Columns: "
                            f"{listing(obs.columns)}.")
    frame = pd.DataFrame({"value": obs[covariate_key].astype(str).to_numpy(),
                          "treatment": obs[treatment_key].astype(str).to_numpy()})
    return frame.groupby(["value", "treatment"]).size().rename("n").reset_index()


def _choose(candidates: list, chosen: Sequence | None, n: int | None, seed: int, what: str) -> list:
    """``chosen`` (checked against ``candidates``), else ``n`` sorted candidates drawn with ``seed``, else all."""
    if chosen is not None:
        bad = [c for c in chosen if c not in candidates]
        if bad:
            raise DataError(f"{what} {bad[0]!r} is not a candidate (candidates: {listing(candidates[:20])}"
                            f"{' ...' if len(candidates) > 20 else ''}).")
        return list(chosen)
    if not candidates:
        raise DataError(f"no {what} qualifies; lower min_cells or check the labels.")
    if n is None:
        return list(candidates)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(candidates):
        raise ConfigError(f"asked for {n!r} {what}s; there are {len(candidates)} candidates (1 to {len(candidates)}).")
    picked = np.random.default_rng(seed).choice(len(candidates), size=int(n), replace=False)
    return [candidates[i] for i in sorted(picked)]


def covariate_transfer(obs: pd.DataFrame, treatment_key: str, covariate_key: str,
                       pairs: Sequence[tuple[str, str]] | None = None, *, treatment: str | None = None,
                       n_pairs: int | None = None, folds: bool = False, min_cells: int = 30,
                       control_value: str = "control", seed: int = 0) -> list[Split]:
    """Hold out the treated cells of (covariate value, treatment) pairs; predict them from the value's controls.

    Args:
        obs: the cells' labels.
        treatment_key: the treatment column.
        covariate_key: the covariate column.
        pairs: the (covariate value, treatment) pairs to hold out; None: chosen from the candidates, the pairs
            with at least ``min_cells`` treated cells and ``min_cells`` controls whose treatment is also seen
            (with ``min_cells`` cells) in another covariate value, so it can be transferred.
        treatment: only candidates of this treatment.
        n_pairs: how many candidates to draw (with ``seed``); None: all.
        folds: one split per pair (each held out in turn); otherwise one split holding every pair out.
        min_cells: fewest treated cells (and controls) a candidate pair needs.
        control_value: the treatment value of control cells.
        seed: seed of the draw of ``n_pairs`` candidates.
    """
    table = _table(obs, treatment_key, covariate_key)
    big = table[table["n"] >= min_cells]
    controls = set(big.loc[big["treatment"] == str(control_value), "value"])
    treated = big[(big["treatment"] != str(control_value)) & big["value"].isin(controls)]
    values_of = treated.groupby("treatment")["value"].apply(set).to_dict()
    candidates = sorted((v, t) for v, t in zip(treated["value"], treated["treatment"]) if len(values_of[t]) > 1
                        and (treatment is None or t == str(treatment)))
    chosen = [tuple(map(str, p)) for p in pairs] if pairs is not None else None
    picked = _choose(candidates, chosen, n_pairs, seed, "(covariate value, treatment) pair")
    holds = [HoldOut(covariate_key, v, t) for v, t in picked]
    if folds:
        return [Split(f"{h.value} / {h.treatment}", (h,)) for h in holds]
    for t in {h.treatment for h in holds}:
        if values_of.get(t, set()) <= {h.value for h in holds if h.treatment == t}:
            raise DataError(f"holding out every covariate value of treatment {t!r} leaves nothing to transfer from; "
                            "use folds=True (one pair per split) or fewer pairs.")
    return [Split("; ".join(f"{h.value} / {h.treatment}" for h in holds), tuple(holds))]


def _conditions(table: pd.DataFrame, labels: set[str], covariate_key: str, min_cells: int,
                control_value: str) -> tuple[HoldOut, ...]:
    controls = set(table.loc[(table["treatment"] == str(control_value)) & (table["n"] >= 1), "value"])
    rows = table[table["treatment"].isin(labels) & (table["n"] >= min_cells) & table["value"].isin(controls)]
    return tuple(HoldOut(covariate_key, v, t) for v, t in sorted(zip(rows["value"], rows["treatment"])))


def combinations(obs: pd.DataFrame, treatment_key: str, covariate_key: str, doubles: Sequence[str] | None = None,
                 *, n_doubles: int | None = None, min_cells: int = 30, control_value: str = "control",
                 seed: int = 0) -> list[Split]:
    """Hold out every cell of chosen combinations; keep their parts' single-treatment cells in training.

    Candidates are the combination labels (``A+B``) whose every part is also seen alone; the held-out
    conditions are the (covariate value, combination) pairs with at least ``min_cells`` cells and controls.
    ``doubles``: the combinations (exact labels) to hold out; None: ``n_doubles`` drawn with ``seed`` (all
    when None). One split.
    """
    table = _table(obs, treatment_key, covariate_key)
    labels = sorted(set(table["treatment"]))
    singles = {t for t in labels if COMBINATION_SEP not in t}
    combos = [t for t in labels if COMBINATION_SEP in t
              and {p.strip() for p in t.split(COMBINATION_SEP)} - {str(control_value)} <= singles
              and table.loc[table["treatment"] == t, "n"].max() >= min_cells]
    picked = _choose(combos, list(doubles) if doubles is not None else None, n_doubles, seed, "combination")
    holds = _conditions(table, set(picked), covariate_key, min_cells, control_value)
    if not holds:
        raise DataError(f"none of {listing(picked)} has {min_cells} cells and controls in one {covariate_key!r} value.")
    return [Split(f"combinations: {', '.join(picked)}", holds, tuple(picked))]


def unseen_perturbations(obs: pd.DataFrame, treatment_key: str, covariate_key: str,
                         treatments: Sequence[str] | None = None, *, n_treatments: int | None = None,
                         min_cells: int = 30, control_value: str = "control", seed: int = 0) -> list[Split]:
    """Hold out every cell of chosen single treatments (and of the combinations containing them).

    Candidates are the single treatments with at least ``min_cells`` cells and controls in some covariate
    value; the held-out conditions are those (value, treatment) pairs. ``treatments``: the treatments to hold
    out; None: ``n_treatments`` drawn with ``seed`` (all when None). One split. Only models that can embed a
    treatment they never saw can predict these (NoChange and PerturbedMean answer anything).
    """
    table = _table(obs, treatment_key, covariate_key)
    controls = set(table.loc[table["treatment"] == str(control_value), "value"])
    ok = table[(table["n"] >= min_cells) & table["value"].isin(controls) & (table["treatment"] != str(control_value))
               & ~table["treatment"].str.contains(COMBINATION_SEP, regex=False)]
    candidates = sorted(set(ok["treatment"]))
    picked = _choose(candidates, list(treatments) if treatments is not None else None, n_treatments, seed,
                     "treatment")
    holds = _conditions(table, set(picked), covariate_key, min_cells, control_value)
    return [Split(f"unseen: {', '.join(picked)}", holds, tuple(picked))]


#: The task builders by name (what a benchmark config's ``[task] kind`` names).
TASKS = {"covariate_transfer": covariate_transfer, "combinations": combinations,
         "unseen_perturbations": unseen_perturbations}
