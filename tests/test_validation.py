"""Bad input at every boundary (setup_anndata, recipes, compose, train, predict, load, spec files).

Each case asserts three things: the error is an fcrkit.errors class, it is raised by fcrkit's own code
(the innermost frame of the traceback is inside the fcrkit package, not in torch, Pyro, pandas or
anndata), and its message names the offending key or value.
"""

from __future__ import annotations

import json
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import fcrkit
from fcrkit.errors import ConfigError, DataError, FcrkitError, UnknownComponentError
from fcrkit.models import FCR, SCVI, BetaVAE, Model

FCRKIT_DIR = Path(fcrkit.__file__).resolve().parent
COUNT_LIKELIHOODS = "'gaussian', 'lognorm_gaussian', 'nb', 'poisson', 'zinb'"  # as the registry lists the likelihoods


def assert_fcrkit_error(excinfo: pytest.ExceptionInfo, error: type[FcrkitError], *fragments: str) -> str:
    """The error is ``error``, its innermost frame lies in the fcrkit package, its message has ``fragments``."""
    assert excinfo.type is error, f"{excinfo.type.__name__} instead of {error.__name__}: {excinfo.value}"
    tb = excinfo.tb
    while tb.tb_next is not None:  # walk to the frame that raised
        tb = tb.tb_next
    raised_in = Path(tb.tb_frame.f_code.co_filename).resolve()
    assert FCRKIT_DIR in raised_in.parents, f"raised from {raised_in}, outside fcrkit: {excinfo.value}"
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def raises(call: Callable[[], Any], error: type[FcrkitError], *fragments: str) -> str:
    """Run ``call`` and check the error it raises with :func:`assert_fcrkit_error`."""
    with pytest.raises(FcrkitError) as excinfo:
        call()
    return assert_fcrkit_error(excinfo, error, *fragments)


# -- data ---------------------------------------------------------------------------------------------
_BASE = fcrkit.simulate.basic(n_cells=100, n_genes=20, seed=0)  # counts, CSR; 4 cell types, 2 drugs + control


def raw(**obs: Any) -> ad.AnnData:
    """A fresh copy of the simulated counts, with obs columns replaced or added, not set up."""
    adata = _BASE.copy()
    for key, values in obs.items():
        adata.obs[key] = values
    return adata


def setup(adata: ad.AnnData | None = None, **kwargs: Any) -> ad.AnnData:
    """``adata`` (default: the counts) registered with treatment and cell type."""
    adata = raw() if adata is None else adata
    kwargs = {"treatment_key": "treatment", "covariate_keys": ["cell_type"], **kwargs}
    fcrkit.setup_anndata(adata, **kwargs)
    return adata


def with_x(change: Callable[[np.ndarray], None]) -> ad.AnnData:
    """The counts as a dense float matrix, changed in place by ``change``."""
    adata = raw()
    x = adata.X.toarray().astype(np.float32)
    change(x)
    adata.X = x
    return adata


def set_value(value: float, row: int = 7) -> Callable[[np.ndarray], None]:
    def change(x: np.ndarray) -> None:
        x[row, 3] = value
    return change


def halved(x: np.ndarray) -> None:
    x *= 0.5


def log_normalised() -> ad.AnnData:
    adata = raw()
    adata.X = fcrkit.metrics.log_normalize(adata.X).astype(np.float32)
    return setup(adata)


def one_block(**overrides: Any) -> dict:
    spec = {"name": "m", "blocks": [{"name": "z", "dim": 3, "encoder": {"name": "mlp", "n_hidden": 8}}],
            "decoder": {"name": "mlp", "n_hidden": 8}}
    spec.update(overrides)
    return spec


SMALL = {"n_hidden": 8, "n_layers": 1}
FCR_SMALL = {"n_hidden": 8, "n_layers": 1, "prior_hidden": 8}


# -- setup_anndata --------------------------------------------------------------------------------------
SETUP_CASES = {
    "missing treatment key": (raw, {"treatment_key": "drug"}, ["'drug'", "'treatment'"]),
    "missing covariate key": (raw, {"covariate_keys": ["celltype"]}, ["'celltype'", "Did you mean 'cell_type'"]),
    "missing layer": (raw, {"layer": "counts"}, ["'counts'", "adata.layers"]),
    "control value absent": (raw, {"treatment_key": "treatment", "control_value": "ctrl"},
                             ["'ctrl'", "'drug_0'", "'drug_1'", "Did you mean 'control'"]),
    "NaN in X": (lambda: with_x(set_value(np.nan)), {}, ["non-finite", "nan", "'cell_7'"]),
    "inf in X": (lambda: with_x(set_value(np.inf, row=9)), {}, ["non-finite", "inf", "'cell_9'"]),
    "NaN treatment": (lambda: raw(treatment=["control", np.nan] * 50), {"treatment_key": "treatment"},
                      ["'treatment'", "50 missing"]),
    "NaN covariate": (lambda: raw(cell_type=pd.Categorical(["type_0", None] * 50)), {"covariate_keys": "cell_type"},
                      ["'cell_type'", "50 missing"]),
    "negative dose": (lambda: raw(dose=np.where(np.arange(100) == 3, -2.0, 1.0)),
                      {"treatment_key": "treatment", "dose_key": "dose"}, ["-2", "'cell_3'", "non-negative"]),
    # cell 2 is treated (a control's dose may be missing: controls need no dose, see tests/test_faults.py)
    "NaN dose": (lambda: raw(dose=np.where(np.arange(100) == 2, np.nan, 1.0)),
                 {"treatment_key": "treatment", "dose_key": "dose"}, ["'dose'", "1 missing", "'cell_2'"]),
    "non-numeric dose": (lambda: raw(dose=["1.0"] * 5 + ["high"] + ["1.0"] * 94),
                         {"treatment_key": "treatment", "dose_key": "dose"}, ["'high'", "'cell_5'", "not a number"]),
    "infinite dose": (lambda: raw(dose=np.where(np.arange(100) == 4, np.inf, 1.0)),
                      {"treatment_key": "treatment", "dose_key": "dose"}, ["inf", "'cell_4'", "finite"]),
    "no cells": (lambda: raw()[:0].copy(), {}, ["0 cells"]),
    "no genes": (lambda: raw()[:, :0].copy(), {}, ["0 genes"]),
}


@pytest.mark.parametrize("case", list(SETUP_CASES), ids=list(SETUP_CASES))
def test_setup_anndata_refuses(case: str) -> None:
    build, kwargs, fragments = SETUP_CASES[case]
    adata = build()
    raises(lambda: fcrkit.setup_anndata(adata, **kwargs), DataError, *fragments)


# -- recipe constructors and compose ------------------------------------------------------------------
CONSTRUCTOR_CASES = {
    # counts likelihoods on values that are not counts: the message suggests gaussian or raw counts
    "scvi nb on non-integers": (lambda: SCVI(setup(with_x(halved)), **SMALL), DataError,
                                ["'nb'", "integer counts", "gaussian", "layer="]),
    "betavae zinb on a negative value": (lambda: BetaVAE(setup(with_x(set_value(-1.0))), likelihood="zinb", **SMALL),
                                         DataError, ["'zinb'", "-1", "cell index 7", "gaussian"]),
    "fcr poisson on non-integers": (lambda: FCR(setup(with_x(halved)), likelihood="poisson", **FCR_SMALL),
                                    DataError, ["'poisson'", "gaussian"]),
    "compose nb on log-normalised data": (lambda: fcrkit.compose(one_block(likelihood="nb"), log_normalised()),
                                          DataError, ["'nb'", "gaussian"]),
    # raw counts to a real-valued likelihood
    "betavae gaussian on raw counts": (lambda: BetaVAE(setup(), likelihood="gaussian", **SMALL), DataError,
                                       ["'gaussian'", "raw counts", "\"nb\""]),
    "compose gaussian on raw counts": (lambda: fcrkit.compose(one_block(likelihood="gaussian"), setup()), DataError,
                                       ["'gaussian'", "raw counts"]),
    # an unknown component lists the registered ones
    "scvi likelihood nbb": (lambda: SCVI(setup(), likelihood="nbb"), UnknownComponentError,
                            ["'nbb'", "Did you mean 'nb'", COUNT_LIKELIHOODS]),
    "betavae likelihood nbb": (lambda: BetaVAE(setup(), likelihood="nbb"), UnknownComponentError,
                               ["'nbb'", COUNT_LIKELIHOODS]),
    "fcr likelihood nbb": (lambda: FCR(setup(), likelihood="nbb"), UnknownComponentError, ["'nbb'", COUNT_LIKELIHOODS]),
    "compose likelihood nbb": (lambda: fcrkit.compose(one_block(likelihood="nbb"), setup()), UnknownComponentError,
                               ["'nbb'", COUNT_LIKELIHOODS]),
    "compose encoder mpl": (lambda: fcrkit.compose(one_block(blocks=[{"name": "z", "dim": 3, "encoder": "mpl"}]),
                                                   setup()), UnknownComponentError, ["encoder 'mpl'", "'mlp'"]),
    # empty data and things that are not AnnData
    "scvi on 0 cells": (lambda: SCVI(setup()[:0].copy()), DataError, ["0 cells"]),
    "fcr on 0 genes": (lambda: FCR(setup()[:, :0].copy()), DataError, ["0 genes"]),
    "compose on 0 cells": (lambda: fcrkit.compose(one_block(), setup()[:0].copy()), DataError, ["0 cells"]),
    "scvi on an array": (lambda: SCVI(np.zeros((5, 3))), DataError, ["AnnData", "ndarray"]),
    "scvi on data not set up": (lambda: SCVI(raw()), DataError, ["setup_anndata"]),
}
for value in (0, -3, 2.5, "10", True):
    CONSTRUCTOR_CASES[f"scvi n_latent={value!r}"] = (lambda v=value: SCVI(setup(), n_latent=v), ConfigError,
                                                     [f"n_latent={value!r}", "positive integer"])
for value in (0, 2.5, "10"):
    CONSTRUCTOR_CASES[f"fcr n_latent={value!r}"] = (lambda v=value: FCR(setup(), n_latent=v), ConfigError,
                                                    [f"n_latent={value!r}", "positive integer"])
CONSTRUCTOR_CASES.update({
    "betavae n_latent=-3": (lambda: BetaVAE(setup(), n_latent=-3), ConfigError, ["n_latent=-3"]),
    "fcr n_latent x=0": (lambda: FCR(setup(), n_latent={"x": 0, "t": 2, "tx": 2}), ConfigError,
                         ["n_latent['x']=0", "positive integer"]),
    "fcr n_latent missing block": (lambda: FCR(setup(), n_latent={"x": 2, "t": 2}), ConfigError,
                                   ["n_latent=", "'tx'"]),
    "compose dim=0": (lambda: fcrkit.compose(one_block(blocks=[{"name": "z", "dim": 0}]), setup()), ConfigError,
                      ["block 'z'", "got 0"]),
    "compose dim='10'": (lambda: fcrkit.compose(one_block(blocks=[{"name": "z", "dim": "10"}]), setup()), ConfigError,
                         ["block 'z'", "got '10'"]),
})


@pytest.mark.parametrize("case", list(CONSTRUCTOR_CASES), ids=list(CONSTRUCTOR_CASES))
def test_constructors_refuse(case: str) -> None:
    build, error, fragments = CONSTRUCTOR_CASES[case]
    raises(build, error, *fragments)


# -- what FCR needs of the data -------------------------------------------------------------------------
def only_type_1_treated() -> ad.AnnData:
    """Every cell of type_1 is treated: that covariate combination has no control."""
    adata = raw()
    treatment = adata.obs["treatment"].astype(str)
    treatment[adata.obs["cell_type"] == "type_1"] = "drug_0"
    adata.obs["treatment"] = treatment
    return setup(adata)


FCR_DATA_CASES = {
    # the treatment vocabulary is empty: nothing that conditions on t can be built
    "every cell a control": (lambda: FCR(setup(raw(treatment=["control"] * 100)), **FCR_SMALL), DataError,
                             ["'treatment'", "only the control 'control'", "treated and control cells"]),
    # setup_anndata already refuses a treatment column without the control value
    "no control at all": (lambda: setup(raw(treatment=["drug_0", "drug_1"] * 50)), DataError,
                          ["control_value 'control'", "'drug_0'"]),
    # 'control' occurs only inside combinations, so setup_anndata accepts it, but no cell has t = 0
    "no untreated cell": (lambda: FCR(setup(raw(treatment=["drug_0+control", "drug_1"] * 50)), **FCR_SMALL),
                          DataError, ["control_pairing='covariates'", "no cell is a control"]),
    "no covariates": (lambda: FCR(setup(covariate_keys=[]), **FCR_SMALL), ConfigError, ["'x'", "covariate_keys"]),
    "no treatment": (lambda: FCR(setup(treatment_key=None), **FCR_SMALL), ConfigError, ["'t'", "treatment_key"]),
    # control pairing within covariates is checked when the model is built, not after an epoch
    "covariate combination without controls": (lambda: FCR(only_type_1_treated(), **FCR_SMALL), DataError,
                                                ["cell_type='type_1'", "control_pairing='any'"]),
    "compose pairing without controls": (
        lambda: fcrkit.compose(one_block(control_pairing="covariates"), only_type_1_treated()), DataError,
        ["control_pairing='covariates'", "cell_type='type_1'", "control_pairing='any'"]),
}


@pytest.mark.parametrize("case", list(FCR_DATA_CASES), ids=list(FCR_DATA_CASES))
def test_fcr_refuses_data_it_cannot_learn_from(case: str) -> None:
    build, error, fragments = FCR_DATA_CASES[case]
    raises(build, error, *fragments)


def test_fcr_accepts_what_does_work():
    """One treatment and one covariate level are thin but not degenerate: both classifiers still train
    (a binary treated/control target, a constant cell-type target), so they are accepted; so is pairing
    with any control when a covariate combination has none of its own."""
    adata = raw(cell_type=pd.Categorical(["type_0"] * 100))
    adata.obs["treatment"] = np.where(adata.obs["treatment"] == "control", "control", "drug_0")
    model = FCR(setup(adata), n_latent=2, seed=0, **FCR_SMALL)
    history = model.train(max_epochs=1, batch_size=50, seed=0, accelerator="cpu", progress_bar=False)
    assert np.isfinite(history["loss"]).all()
    FCR(only_type_1_treated(), n_latent=2, control_pairing="any", **FCR_SMALL)


# -- train() ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained() -> SCVI:
    return SCVI(setup(), n_latent=2, **SMALL)


@pytest.mark.parametrize("settings, fragments", [
    ({"max_epochs": 0}, ["max_epochs=0", "positive integer"]),
    ({"batch_size": -1}, ["batch_size=-1", "positive integer"]),
    ({"lr": 0}, ["lr=0", "positive"]),
    ({"max_epoch": 3}, ["'max_epoch'", "'max_epochs'"]),
], ids=["max_epochs=0", "batch_size=-1", "lr=0", "unknown setting"])
def test_train_refuses_bad_settings(untrained: SCVI, settings: dict, fragments: list[str]) -> None:
    raises(lambda: untrained.train(accelerator="cpu", **settings), ConfigError, *fragments)


# -- predict() --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained() -> FCR:
    """FCR with doses, trained for one epoch on 100 cells (enough for predict and save/load)."""
    adata = setup(raw(dose=np.where(_BASE.obs["treatment"] == "control", 0.0, 1.0)), dose_key="dose")
    model = FCR(adata, n_latent=2, seed=0, **FCR_SMALL)
    model.train(max_epochs=1, batch_size=50, seed=0, accelerator="cpu", progress_bar=False)
    return model


def controls(model: Model) -> ad.AnnData:
    return model.adata[model.adata.obs["treatment"] == "control"].copy()


def unseen_cell_type(model: Model) -> ad.AnnData:
    cells = controls(model)
    cells.obs["cell_type"] = ["type_9"] + list(cells.obs["cell_type"].astype(str)[1:])
    return cells


def extra_gene(model: Model) -> ad.AnnData:
    cells = controls(model)
    more = ad.AnnData(sp.csr_matrix(np.ones((cells.n_obs, 1), dtype=np.float32)), obs=cells.obs[[]],
                      var=pd.DataFrame(index=["gene_new"]))
    return ad.concat([cells, more], axis=1, merge="first")


PREDICT_CASES = {
    "unseen treatment": (lambda m: m.predict(controls(m), "drug_9"), DataError,
                         ["'drug_9'", "'drug_0', 'drug_1'", "control: 'control'"]),
    "unseen part of a combination": (lambda m: m.predict(controls(m), "drug_0+drug_7"), DataError,
                                     ["'drug_7'", "'drug_0', 'drug_1'"]),
    "treatment not a str": (lambda m: m.predict(controls(m), 3), ConfigError, ["treatment=3"]),
    "unseen covariate level": (lambda m: m.predict(unseen_cell_type(m), "drug_0"), DataError,
                               ["'cell_type'", "'type_9'", "'type_0'"]),
    "a gene missing": (lambda m: m.predict(controls(m)[:, 1:].copy(), "drug_0"), DataError,
                       ["missing", "'gene_0'"]),
    "an extra gene": (lambda m: m.predict(extra_gene(m), "drug_0"), DataError, ["not in the model", "'gene_new'"]),
    "genes reordered": (lambda m: m.predict(controls(m)[:, ::-1].copy(), "drug_0"), DataError,
                        ["another order", "'gene_19'", "model.var_names"]),
    "dose not a number": (lambda m: m.predict(controls(m), "drug_0", dose="lots"), ConfigError, ["dose='lots'"]),
    "negative dose": (lambda m: m.predict(controls(m), "drug_0", dose=-1.0), ConfigError,
                      ["dose=-1.0", "non-negative"]),
    "NaN dose": (lambda m: m.predict(controls(m), "drug_0", dose=float("nan")), ConfigError, ["dose=nan"]),
    "dose None": (lambda m: m.predict(controls(m), "drug_0", dose=None), ConfigError, ["dose=None"]),
    "dose a list": (lambda m: m.predict(controls(m), "drug_0", dose=[1, 2]), ConfigError, ["dose=[1, 2]"]),
    "dose per part mismatched": (lambda m: m.predict(controls(m), "drug_0+drug_1", dose="1+2+3"), ConfigError,
                                 ["dose='1+2+3'", "'drug_0+drug_1'"]),
    "cells not an AnnData": (lambda m: m.predict(controls(m).X, "drug_0"), DataError, ["AnnData", "csr_matrix"]),
    "from_prior unknown": (lambda m: m.predict(controls(m), "drug_0", from_prior="median"), ConfigError,
                           ["from_prior='median'"]),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES), ids=list(PREDICT_CASES))
def test_predict_refuses(trained: FCR, case: str) -> None:
    call, error, fragments = PREDICT_CASES[case]
    raises(lambda: call(trained), error, *fragments)


def test_predict_refuses_a_dose_when_the_model_has_no_doses() -> None:
    model = FCR(setup(), n_latent=2, seed=0, **FCR_SMALL)
    raises(lambda: model.predict(controls(model), "drug_0", dose=2.0), ConfigError, "dose=2.0", "dose_key")
    assert model.predict(controls(model), "drug_0", dose=1.0).n_obs == controls(model).n_obs


# -- load() -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(trained: FCR, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained.save(tmp_path_factory.mktemp("saved") / "fcr")


def damaged(saved: Path, tmp_path: Path, change: Callable[[Path], None]) -> Path:
    """A copy of the saved model directory, changed by ``change``."""
    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    change(copy)
    return copy


def edit_meta(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        meta = json.loads((path / "model.json").read_text())
        change(meta)
        (path / "model.json").write_text(json.dumps(meta))
    return edit


def truncate_weights(path: Path) -> None:
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])


def other_weights(path: Path) -> None:
    SCVI(setup(), n_latent=2, **SMALL).save(path.parent / "other")
    shutil.copy(path.parent / "other" / "model.pt", path / "model.pt")


def scramble_weights(path: Path) -> None:
    data = bytearray((path / "model.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # zeros over the archive's records
    (path / "model.pt").write_bytes(bytes(data))


def weights_not_a_dict(path: Path) -> None:
    torch.save([torch.zeros(2)], path / "model.pt")


def unrecorded(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """``change``, on a model.json without the weights checksum (as saved by an earlier fcrkit)."""
    def edit(path: Path) -> None:
        change(path)
        edit_meta(lambda meta: meta.pop("weights_sha256"))(path)
    return edit


LOAD_CASES = {
    "missing directory": (lambda p: shutil.rmtree(p), ConfigError, ["not an fcrkit model directory", "does not exist"]),
    "no model.json": (lambda p: (p / "model.json").unlink(), ConfigError, ["no model.json"]),
    "no model.pt": (lambda p: (p / "model.pt").unlink(), ConfigError, ["no model.pt"]),
    "garbage model.json": (lambda p: (p / "model.json").write_text("garbage {{ not json"), ConfigError,
                           ["model.json", "corrupt"]),
    "model.json not an object": (lambda p: (p / "model.json").write_text("[1, 2]"), ConfigError,
                                 ["model.json", "corrupt", "list"]),
    "model.json lacks the spec": (edit_meta(lambda m: m.pop("spec")), ConfigError, ["model.json", "lacks 'spec'"]),
    "model.json with an invalid spec": (edit_meta(lambda m: m["spec"]["blocks"][0].update(dim=0)), ConfigError,
                                        ["model.json", "invalid spec", "dim"]),
    # with the checksum model.json records, any damage to model.pt is caught before torch reads it
    "truncated model.pt": (truncate_weights, ConfigError, ["model.pt", "damaged or was replaced", "checksum"]),
    "scrambled model.pt": (scramble_weights, ConfigError, ["model.pt", "damaged or was replaced"]),
    "model.pt of another model": (other_weights, ConfigError, ["model.pt", "damaged or was replaced"]),
    # without one (models saved before it was recorded), torch's own errors become ConfigErrors
    "truncated model.pt, no checksum": (unrecorded(truncate_weights), ConfigError,
                                        ["model.pt", "cannot be read", "damaged or truncated"]),
    "empty model.pt, no checksum": (unrecorded(lambda p: (p / "model.pt").write_bytes(b"")), ConfigError,
                                    ["model.pt", "cannot be read"]),
    "garbage model.pt, no checksum": (unrecorded(lambda p: (p / "model.pt").write_bytes(b"not torch " * 20)),
                                      ConfigError, ["model.pt", "cannot be read"]),
    "model.pt holds a list, no checksum": (unrecorded(weights_not_a_dict), ConfigError,
                                           ["model.pt", "does not hold model weights"]),
    "model.pt of another model, no checksum": (unrecorded(other_weights), ConfigError,
                                               ["model.pt", "does not fit the model"]),
    "format version 99": (edit_meta(lambda m: m.update(format_version=99)), ConfigError,
                          ["version 99", "reads 'fcrkit-model' version 1"]),
}


@pytest.mark.parametrize("case", list(LOAD_CASES), ids=list(LOAD_CASES))
def test_load_refuses(saved: Path, trained: FCR, tmp_path: Path, case: str) -> None:
    change, error, fragments = LOAD_CASES[case]
    path = damaged(saved, tmp_path, change)
    message = raises(lambda: FCR.load(path, trained.adata), error, *fragments)
    assert str(path) in message


def test_load_refuses_another_class_and_other_genes(saved: Path, trained: FCR) -> None:
    raises(lambda: SCVI.load(saved, trained.adata), ConfigError, "fcrkit.models.fcr.FCR", "load it with that class")
    raises(lambda: FCR.load(saved, trained.adata[:, 2:].copy()), DataError, "'gene_0'", "'gene_1'")


class _L2Means:
    """L2 penalty on the posterior means (a component only a plugin provides)."""

    def __init__(self, info):
        pass

    def loss(self, ctx):
        return sum(loc.pow(2).sum(-1).mean() for loc in ctx.loc.values())


def test_load_names_the_plugin_of_a_component_that_is_not_installed(tmp_path: Path) -> None:
    plug = types.ModuleType("validation_plugin")

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        registry.regularizer("validation_l2", _L2Means)

    plug.fcrkit_register_components = fcrkit_register_components
    adata = setup()
    with fcrkit.registry.plugin(plug, name="validation-plugin"):
        model = fcrkit.compose(one_block(regularizers=[{"name": "validation_l2", "weight": 1.0}]), adata, seed=0)
        model.save(tmp_path / "with_plugin")
        Model.load(tmp_path / "with_plugin", adata)  # loads while the plugin is there
    assert "validation_l2" not in fcrkit.get_registry().names("regularizer")
    raises(lambda: Model.load(tmp_path / "with_plugin", adata), UnknownComponentError,
           "regularizer 'validation_l2'", "plugin validation-plugin (registered for a test)", "Install that plugin",
           "not installed")


# -- spec files and component options -------------------------------------------------------------------------
TOML_HEAD = 'name = "m"\nlikelihood = "nb"\n\n[[blocks]]\nname = "z"\ndim = 3\n'
SPEC_CASES = {
    # a key the spec format does not have: the file, the line, the key
    "unknown top-level key": (TOML_HEAD.replace('likelihood = "nb"', 'likelihod = "nb"'), ConfigError,
                              [":2:", "'likelihod'", "Did you mean 'likelihood'"]),
    "unknown block key": (TOML_HEAD + "dims = 4\n", ConfigError, [":7:", "block 'z'", "'dims'", "'dim'"]),
    # an option the component does not take
    "unknown encoder option": (TOML_HEAD + 'encoder = { name = "mlp", n_hiden = 8 }\n', ConfigError,
                               [":7:", "encoder 'mlp'", "'n_hiden'", "Did you mean 'n_hidden'"]),
    "unknown regularizer option": (TOML_HEAD + '\n[[regularizers]]\nname = "kl"\nblockz = ["z"]\n', ConfigError,
                                   [":10:", "regularizer 'kl'", "'blockz'", "Did you mean 'blocks'"]),
    "regularizer option with a bad value": (TOML_HEAD + '\n[[regularizers]]\nname = "kl"\nblocks = ["q"]\n',
                                            ConfigError, ["regularizer 'kl'", "unknown block 'q'", "'z'"]),
    "unknown regularizer": (TOML_HEAD + '\n[[regularizers]]\nname = "kll"\n', UnknownComponentError,
                            ["regularizer 'kll'", "Did you mean 'kl'"]),
    "bad dim": (TOML_HEAD.replace("dim = 3", "dim = -1"), ConfigError, ["block 'z'", "got -1"]),
    "not TOML": ('name = "m\n', ConfigError, ["not valid TOML"]),
}


@pytest.mark.parametrize("case", list(SPEC_CASES), ids=list(SPEC_CASES))
def test_spec_files_are_refused_naming_file_and_line(tmp_path: Path, case: str) -> None:
    text, error, fragments = SPEC_CASES[case]
    path = tmp_path / "spec.toml"
    path.write_text(text)
    message = raises(lambda: fcrkit.compose(path, setup()), error, *fragments)
    assert message.startswith(str(path))


@pytest.mark.parametrize("spec, fragments", [
    (one_block(blocks=[{"name": "z", "dim": 3, "prior": {"name": "standard_normal", "scale": 2}}]),
     ["prior 'standard_normal'", "'scale'"]),
    (one_block(regularizers=[{"name": "kl", "blockz": ["z"]}]), ["regularizer 'kl'", "'blockz'", "'blocks'"]),
    (one_block(likelihood={"name": "nb", "dispersal": "gene"}), ["likelihood 'nb'", "'dispersal'", "'dispersion'"]),
], ids=["prior option", "regularizer option", "likelihood option"])
def test_unknown_component_options_in_a_dict_spec(spec: dict, fragments: list[str]) -> None:
    raises(lambda: fcrkit.compose(spec, setup()), ConfigError, *fragments)


def test_fcr_regularizer_option_typo() -> None:
    raises(lambda: FCR(setup(), regularizers=[{"name": "label_classifier", "key": "extra", "lable": "t"}]),
           ConfigError, "regularizer 'label_classifier'", "'lable'", "Did you mean 'label'")
