"""The "Write a model" page: its Python and TOML give the same spec, and the model trains as the page says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from fcrkit.spec import ModelSpec

PAGE = Path(__file__).parents[1] / "docs" / "write-a-model.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_pages_python_and_toml_are_the_same_spec_and_it_trains(tmp_path):
    python, training = _blocks("python")
    (toml,) = _blocks("toml")
    namespace: dict = {}
    exec(python, namespace)  # noqa: S102 - the page's own example
    path = tmp_path / "sparse_shifts.toml"
    path.write_text(toml)
    assert ModelSpec.from_toml(path) == namespace["spec"]

    torch.manual_seed(0)
    exec(training, namespace)  # noqa: S102
    model, adata = namespace["model"], namespace["adata"]
    assert namespace["cells"].shape == (adata.n_obs, 8)
    masks = namespace["masks"]
    assert list(masks.index) == list(model.setup.treatments) and masks.shape[1] == 8
    loss = model.history["loss"]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]  # five epochs of the page's model make progress
