"""Treatment targets: which latent dimensions each treatment shifts, scored against the truth.

sVAE's target identification: after matching learned latent dimensions to true ones (e.g. by
:func:`fcrkit.metrics.mcc`, Hungarian matching on ``|corr|``), compare the learned 0/1 target
matrix (treatments x dimensions) with the true one entry by entry.
"""

from __future__ import annotations

import numpy as np

from fcrkit.errors import ConfigError

__all__ = ["target_scores"]


def target_scores(true_targets: np.ndarray, learned_targets: np.ndarray, matching: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of learned treatment targets after matching latent dimensions.

    Args:
        true_targets: ``(n_treatments, d_true)`` 0/1 matrix of the true targets.
        learned_targets: ``(n_treatments, d_hat)`` 0/1 matrix of the learned ones (same treatment rows).
        matching: for each true dimension, the learned dimension it corresponds to (e.g.
            :func:`fcrkit.metrics.mcc`'s ``matching``; -1 where unmatched, counted as "not a target").

    Returns:
        ``{"precision", "recall", "f1", "density"}`` over all (treatment, true dimension) entries;
        ``density`` is the fraction of learned entries that are targets.
    """
    true = np.asarray(true_targets) > 0
    learned = np.asarray(learned_targets) > 0
    matching = np.asarray(matching)
    if true.shape[0] != learned.shape[0] or matching.shape != (true.shape[1],):
        raise ConfigError(f"target_scores: shapes {true.shape}, {learned.shape} and matching {matching.shape} "
                          "do not fit (same treatment rows; one match per true dimension).")
    aligned = np.zeros_like(true)
    ok = matching >= 0
    aligned[:, ok] = learned[:, matching[ok]]
    tp = float((aligned & true).sum())
    precision = tp / max(aligned.sum(), 1)
    recall = tp / max(true.sum(), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "density": float(learned.mean())}
