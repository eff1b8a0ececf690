"""How much of a known latent a learned representation recovers."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.metrics import r2_score

from fcrkit.errors import DataError


def linear_r2(z_true: np.ndarray, z_hat: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated R² of a linear regression from ``z_hat`` to ``z_true``.

    Predictions are out-of-fold; the score is ``r2_score(z_true, prediction)`` averaged uniformly over
    the true dimensions (1 = every true latent is a linear function of the learned one).
    """
    z_true, z_hat = np.asarray(z_true, dtype=float), np.asarray(z_hat, dtype=float)
    if z_true.shape[0] != z_hat.shape[0]:
        raise DataError(f"linear_r2: {z_true.shape[0]} true rows but {z_hat.shape[0]} learned rows.")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    prediction = cross_val_predict(LinearRegression(), z_hat, z_true, cv=splitter)
    return float(r2_score(z_true, prediction))
