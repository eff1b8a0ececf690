"""What recipes with their own ``predict`` (VCI, ScGen) share: target labels and the result AnnData."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from anndata import AnnData
from torch import Tensor

from fcrkit.data.loaders import Batch
from fcrkit.errors import ConfigError
from fcrkit.models.base import Model


def check_can_predict(model: Model, treatment: object, dose: object) -> None:
    """Refuse a model set up without a treatment, or a target it cannot encode."""
    if model.setup.treatment_key is None:
        raise ConfigError("this model was set up without a treatment_key; it cannot predict a treatment.")
    model._check_target(treatment, dose)


def target_labels(model: Model, adata: AnnData, treatment: str, dose: float | str, device: torch.device
                  ) -> dict[str, Tensor]:
    """The labels of the cells of ``adata`` with their treatment set to ``treatment`` at ``dose``."""
    obs = adata.obs.copy()
    obs[model.setup.treatment_key] = str(treatment)
    if model.setup.dose_key is not None:
        obs[model.setup.dose_key] = dose
    return {k: torch.as_tensor(v, device=device) for k, v in model.setup.encode_labels(obs).items()}


@torch.no_grad()
def predict_cells(model: Model, adata: AnnData, batch_size: int,
                  decode: Callable[[Batch, dict[str, Tensor]], Tensor], target: dict[str, Tensor] | None = None
                  ) -> np.ndarray:
    """``decode(batch, target labels of the batch)`` over the cells of ``adata``, concatenated."""
    data = model._cell_data(adata)
    model.module.eval()
    out = []
    for batch in _batches(data, batch_size):
        labels = {k: v.index_select(0, batch.index) for k, v in (target or {}).items()}
        out.append(decode(batch, labels).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _batches(data, batch_size: int) -> Iterator[Batch]:
    return data.iter_batches(torch.arange(data.n_obs, device=data.device), batch_size, shuffle=False)


def prediction_anndata(model: Model, adata: AnnData, values: np.ndarray, treatment: str, dose: float | str,
                       info: dict) -> AnnData:
    """The predicted values as an AnnData of the cells of ``adata``, its ``obs`` saying the target."""
    obs = adata.obs.copy()
    obs[model.setup.treatment_key] = str(treatment)
    if model.setup.dose_key is not None:
        obs[model.setup.dose_key] = dose
    obs["fcrkit_prediction"] = f"{treatment} (dose {dose})"
    result = AnnData(values, obs=obs, var=adata.var.copy())
    result.uns["fcrkit_prediction"] = {"treatment": str(treatment), "dose": str(dose), "model": model.spec.name,
                                       **info}
    return result
