"""Control pairing: each cell meets a random control cell of its covariate combination.

FCR encodes such a paired control with ``t = 0`` next to the treated cell and adds its ELBO; the
similarity terms compare the two. Partners are drawn afresh at every step on the data's device.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import Tensor

from fcrkit.data.anndata import AnnDataSetup
from fcrkit.errors import ConfigError, DataError

MODES = ("covariates", "any")


class ControlPairing:
    """Which cells may be drawn as the control partner of which.

    Args:
        groups: ``(n,)`` int code of each cell's covariate combination.
        is_control: ``(n,)`` bool, the cells with no treatment.
        group_names: a readable name per group code, for error messages.
    """

    def __init__(self, groups: np.ndarray, is_control: np.ndarray, group_names: list[str]):
        self.groups = np.asarray(groups, dtype=np.int64)
        self.is_control = np.asarray(is_control, dtype=bool)
        self.group_names = group_names

    @classmethod
    def from_anndata(cls, adata: AnnData, setup: AnnDataSetup, mode: str = "covariates") -> ControlPairing:
        """Pairing of the cells of ``adata``: within covariate combinations, or ``"any"`` control."""
        if mode not in MODES:
            raise ConfigError(f"control pairing mode {mode!r} is not one of 'covariates', 'any'.")
        if setup.treatment_key is None:
            raise ConfigError("control pairing needs a treatment: pass treatment_key to fcrkit.setup_anndata.")
        is_control = setup.encode_labels(adata.obs)["t"].counts() == 0 if "t" in setup.label_dims \
            else np.ones(adata.n_obs, dtype=bool)
        if mode == "any" or not setup.covariate_keys:
            return cls(np.zeros(adata.n_obs, dtype=np.int64), is_control, ["all cells"])
        keys = list(setup.covariate_keys)
        obs = adata.obs[keys].astype(str)
        combos = obs.agg(" / ".join, axis=1) if len(keys) > 1 else obs[keys[0]]
        codes, names = pd.factorize(combos)
        label = " / ".join(keys)
        return cls(codes, is_control, [f"{label}={name!r}" for name in names])

    @classmethod
    def for_mode(cls, adata: AnnData, setup: AnnDataSetup, mode: str) -> ControlPairing | None:
        """The pairing a spec's ``control_pairing`` asks for: None for ``"none"``."""
        return None if mode == "none" else cls.from_anndata(adata, setup, mode)

    def check_controls(self, mode: str) -> None:
        """Refuse data in which some covariate combination has no control cell to pair with.

        Called when a model is built, so the problem shows before any training; ``mode`` is the
        spec's ``control_pairing``, for the message.
        """
        missing = self._missing_controls(np.ones(len(self.groups), dtype=bool))
        if not missing.size:
            return
        if not self.is_control.any():
            raise DataError(f"control_pairing={mode!r} pairs each cell with a control cell, but no cell is a "
                            "control (all have a treatment); add control cells.")
        names = ", ".join(self.group_names[g] for g in missing[:5]) + (" ..." if missing.size > 5 else "")
        raise DataError(
            f"control_pairing={mode!r} pairs each cell with a control of its covariates, but {missing.size} "
            f"covariate combination(s) have no control cell: {names}. Add controls for them, drop those "
            "cells, or pair across covariates with control_pairing='any'."
        )

    def _missing_controls(self, allowed: np.ndarray) -> np.ndarray:
        """Group codes among the ``allowed`` cells that have no allowed control cell."""
        needed = np.unique(self.groups[allowed])
        have = np.unique(self.groups[allowed & self.is_control])
        return np.setdiff1d(needed, have)

    def sampler(self, cells: Tensor, device: torch.device) -> PairSampler:
        """A sampler pairing any cell with a control among ``cells`` (e.g. the training split)."""
        allowed = np.zeros(len(self.groups), dtype=bool)
        allowed[cells.cpu().numpy()] = True
        pool = np.flatnonzero(allowed & self.is_control)
        missing = self._missing_controls(allowed)
        if missing.size:
            names = ", ".join(self.group_names[g] for g in missing[:5])
            raise DataError(
                f"no control cells for {missing.size} covariate combination(s) among the training cells: {names}. "
                "Add controls for them, drop those cells, or pair across covariates with "
                "control_pairing = 'any'."
            )
        order = np.argsort(self.groups[pool], kind="stable")
        pool = pool[order]
        counts = np.bincount(self.groups[pool], minlength=len(self.group_names))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return PairSampler(
            groups=torch.as_tensor(self.groups, device=device),
            pool=torch.as_tensor(pool, device=device),
            starts=torch.as_tensor(starts, device=device),
            counts=torch.as_tensor(counts, device=device),
        )


class PairSampler:
    """Draws control partners on the device (no host round trip)."""

    def __init__(self, groups: Tensor, pool: Tensor, starts: Tensor, counts: Tensor):
        self.groups, self.pool, self.starts, self.counts = groups, pool, starts, counts

    def sample(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Row numbers of a random control of the same group for each cell in ``index``."""
        group = self.groups.index_select(0, index)
        u = torch.rand(index.shape, generator=generator, device=generator.device if generator else index.device)
        count = self.counts.index_select(0, group)
        offset = (u.to(index.device) * count).long().clamp_max(count - 1)
        return self.pool.index_select(0, self.starts.index_select(0, group) + offset)
