"""How well a representation keeps cells of the same label together."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from fcrkit.errors import DataError


def knn_accuracy(z: np.ndarray, labels: np.ndarray, *, k: int = 15, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a ``k``-nearest-neighbour classifier of ``labels`` on ``z``.

    Stratified ``folds``-fold cross-validation, Euclidean distance, majority vote.
    """
    z = np.asarray(z)
    labels = np.asarray(labels)
    if z.ndim != 2 or len(z) != len(labels):
        raise DataError(f"knn_accuracy: z has shape {z.shape} but there are {len(labels)} labels.")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), z, labels, cv=splitter)
    return float(np.mean(scores))
