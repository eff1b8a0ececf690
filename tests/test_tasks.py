"""fcrkit.tasks: splits are exact, disjoint from training and reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fcrkit import tasks
from fcrkit.errors import ConfigError, DataError
from fcrkit.runconfig import HoldOut


def labels() -> pd.DataFrame:
    """Three cell lines x (control, A, B, C, A+B, B+C); 40 cells each, but only 5 of (L2, B+C)."""
    rows = [(line, t) for line in ("L0", "L1", "L2") for t in ("control", "A", "B", "C", "A+B", "B+C")
            for _ in range(5 if (line, t) == ("L2", "B+C") else 40)]
    return pd.DataFrame(rows, columns=["line", "drug"], index=[f"c{i}" for i in range(len(rows))])


def held(split, obs):
    return split.held_out_mask(obs, "drug")


def test_covariate_transfer_holds_out_exactly_the_pairs_treated_cells():
    obs = labels()
    (split,) = tasks.covariate_transfer(obs, "drug", "line", [("L1", "A"), ("L2", "C")])
    expected = ((obs["line"] == "L1") & (obs["drug"] == "A")) | ((obs["line"] == "L2") & (obs["drug"] == "C"))
    np.testing.assert_array_equal(held(split, obs), expected.to_numpy())
    assert split.hold_out == (HoldOut("line", "L1", "A"), HoldOut("line", "L2", "C"))
    # in turn: one split per pair, disjoint held-out cells
    folds = tasks.covariate_transfer(obs, "drug", "line", treatment="A", folds=True)
    assert [s.hold_out[0].value for s in folds] == ["L0", "L1", "L2"]
    masks = np.array([held(s, obs) for s in folds])
    assert masks.sum(axis=0).max() == 1 and masks.sum() == 3 * 40


def test_covariate_transfer_draws_reproducibly_from_the_seed():
    obs = labels()
    draw = [tasks.covariate_transfer(obs, "drug", "line", n_pairs=3, seed=s)[0].hold_out for s in (0, 0, 1, 2)]
    assert draw[0] == draw[1] and len(set(draw)) > 1
    # candidates have min_cells treated cells: (L2, B+C) with 5 cells is never drawn
    every = tasks.covariate_transfer(obs, "drug", "line", folds=True)
    assert len(every) == 3 * 5 - 1 and HoldOut("line", "L2", "B+C") not in {s.hold_out[0] for s in every}


def test_combinations_hold_out_every_cell_of_a_double_and_keep_its_singles():
    obs = labels()
    (split,) = tasks.combinations(obs, "drug", "line", ["B+C"])
    np.testing.assert_array_equal(held(split, obs), (obs["drug"] == "B+C").to_numpy())
    # (L2, B+C) has too few cells to be scored, but it still leaves training
    assert split.hold_out == (HoldOut("line", "L0", "B+C"), HoldOut("line", "L1", "B+C"))
    train = obs[~held(split, obs)]
    assert {"B", "C"} <= set(train["drug"]) and "B+C" not in set(train["drug"])
    picks = [tasks.combinations(obs, "drug", "line", n_doubles=1, seed=s)[0].name for s in range(6)]
    assert set(picks) == {"combinations: A+B", "combinations: B+C"}
    assert picks == [tasks.combinations(obs, "drug", "line", n_doubles=1, seed=s)[0].name for s in range(6)]


def test_unseen_perturbations_remove_the_treatment_and_its_combinations():
    obs = labels()
    (split,) = tasks.unseen_perturbations(obs, "drug", "line", ["B"])
    np.testing.assert_array_equal(held(split, obs), obs["drug"].isin(["B", "A+B", "B+C"]).to_numpy())
    assert split.hold_out == tuple(HoldOut("line", v, "B") for v in ("L0", "L1", "L2"))
    assert tasks.unseen_perturbations(obs, "drug", "line", n_treatments=2, seed=4)[0] == \
        tasks.unseen_perturbations(obs, "drug", "line", n_treatments=2, seed=4)[0]


def test_task_errors_name_the_culprit():
    obs = labels()
    with pytest.raises(DataError, match="'Z'"):
        tasks.unseen_perturbations(obs, "drug", "line", ["Z"])
    with pytest.raises(DataError, match="'lin'.*Did you mean 'line'"):
        tasks.combinations(obs, "drug", "lin")
    with pytest.raises(ConfigError, match="9 treatments"):
        tasks.unseen_perturbations(obs, "drug", "line", n_treatments=9)
    with pytest.raises(DataError, match="nothing to transfer"):
        tasks.covariate_transfer(obs, "drug", "line", treatment="A")
