"""Registering an AnnData with fcrkit: which matrix to model and how its labels are encoded.

``setup_anndata`` (the scvi-tools idea) validates the data once, records the choice of matrix and
label columns plus the label vocabularies in ``adata.uns["fcrkit"]``, and returns an
:class:`AnnDataSetup`. The setup turns any ``obs`` table with the same columns into the label
arrays described in :mod:`fcrkit.protocols` ("Labels"):

``"x"``
    the covariates, one-hot per covariate column, concatenated in ``covariate_keys`` order;
``"t"``
    the treatment, dose-weighted multi-hot over the treatment vocabulary:
    ``t = sum_d dose_d * onehot(d)``. Combinations are written ``A+B`` in the treatment column;
    a control (the label ``control_value``, or a ``control`` part of a combination) adds nothing,
    so controls have ``t = 0``. Without a dose column every dose is 1. A numeric dose applies to
    every part of a combination; a string dose such as ``"1.0+0.5"`` gives one dose per part.

A condition whose width would be 0 (no covariates, no treatment vocabulary) is left out. Each
label is held as indices and values (:class:`~fcrkit.data.labels.EncodedLabel`), never as the dense
cells x vocabulary matrix above, which ``np.asarray(label)`` builds on request.

``treatment_features`` (a DataFrame, one row of numbers per treatment) lets models embed a treatment
through its features rather than a free per-treatment embedding, so they can predict treatments absent
from training: every row joins the treatment vocabulary (see :class:`TreatmentFeatures`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from fcrkit.data.disk import DiskMatrix, disk_matrix
from fcrkit.data.labels import EncodedLabel
from fcrkit.errors import ConfigError, DataError, did_you_mean, listing

#: Key of ``adata.uns`` that holds the registered setup.
UNS_KEY = "fcrkit"
#: Separator of the parts of a combination treatment (``"A+B"``) and of its doses (``"1+0.5"``).
COMBINATION_SEP = "+"
#: A matrix of non-negative integers whose maximum exceeds this looks like raw counts.
COUNT_LIKE_MAX = 20.0

_SETUP_VERSION = 1
_DOSE_SEP = re.compile(r"(?<![eE])\+")  # split "1+0.5" but keep "1e+03" whole
_BLOCK_ELEMENTS = 1 << 24  # dense matrices are scanned in row blocks of about this many values

Matrix = np.ndarray | sp.csr_matrix


@dataclass(frozen=True, eq=False)
class TreatmentFeatures:
    """Numeric features of treatments (rows) that models embed instead of learning one vector per treatment.

    Built by :func:`setup_anndata` from a ``treatment_features`` DataFrame and stored with the setup (in
    ``adata.uns``, in a saved model's ``model.json``). Every row's treatment joins the treatment
    vocabulary, so ``predict(cells, treatment=name)`` accepts any treatment with a row, also one that no
    training cell received.

    Attributes:
        names: the treatments, one per row (unique, no combination, not the control).
        columns: the feature names.
        values: ``(len(names), len(columns))`` float64, finite.
    """

    names: tuple[str, ...]
    columns: tuple[str, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64).reshape(len(self.names), len(self.columns))
        values.setflags(write=False)
        object.__setattr__(self, "names", _str_tuple(self.names))
        object.__setattr__(self, "columns", _str_tuple(self.columns))
        object.__setattr__(self, "values", values)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TreatmentFeatures) and self.names == other.names and self.columns == other.columns
                and np.array_equal(self.values, other.values))

    __hash__ = None  # type: ignore[assignment]  # equal by value, like the setup that holds it

    def matrix(self, treatments: Iterable[str]) -> np.ndarray:
        """The rows of ``treatments`` (e.g. the setup's vocabulary), in that order: ``(n, len(columns))``."""
        row = {name: i for i, name in enumerate(self.names)}
        return self.values[[row[str(t)] for t in treatments]]

    def frame(self) -> pd.DataFrame:
        """The features as a DataFrame (rows = treatments)."""
        return pd.DataFrame(self.values, index=list(self.names), columns=list(self.columns))

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for ``adata.uns`` and JSON (floats round-trip exactly)."""
        return {"names": list(self.names), "columns": list(self.columns), "values": self.values.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TreatmentFeatures:
        """Rebuild from :meth:`to_dict` output (also after an h5ad round trip)."""
        return cls(_str_tuple(d["names"]), _str_tuple(d["columns"]), np.asarray(d["values"], dtype=np.float64))


@dataclass(frozen=True)
class AnnDataSetup:
    """What :func:`setup_anndata` registered: the matrix, the label columns and their vocabularies.

    Attributes:
        layer: layer holding the modelled values; ``None`` means ``adata.X``.
        treatment_key: obs column of the treatment labels (``None``: no treatment).
        dose_key: obs column of the doses (``None``: every dose is 1).
        covariate_keys: obs columns of the categorical covariates, in encoding order.
        control_value: the treatment label of control cells.
        treatments: vocabulary of single treatments, sorted, the control excluded.
        covariate_levels: per covariate key, its sorted levels (as strings).
        treatment_features: the treatments' features (None: none given); their rows are in ``treatments``.
    """

    layer: str | None
    treatment_key: str | None
    dose_key: str | None
    covariate_keys: tuple[str, ...]
    control_value: str
    treatments: tuple[str, ...]
    covariate_levels: dict[str, tuple[str, ...]]
    treatment_features: TreatmentFeatures | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "covariate_keys", _str_tuple(self.covariate_keys))
        object.__setattr__(self, "treatments", _str_tuple(self.treatments))
        object.__setattr__(self, "control_value", str(self.control_value))
        levels = {str(k): _str_tuple(v) for k, v in self.covariate_levels.items()}
        missing = [k for k in self.covariate_keys if k not in levels]
        if missing:
            raise ConfigError(f"covariate_levels lacks the levels of covariate(s) {listing(missing)}.")
        object.__setattr__(self, "covariate_levels", {k: levels[k] for k in self.covariate_keys})
        features = self.treatment_features
        if features is not None and set(features.names) - set(self.treatments):
            raise ConfigError("treatment_features has rows that are not in the treatment vocabulary.")

    def feature_matrix(self) -> np.ndarray | None:
        """The treatment features aligned with the vocabulary, ``(len(treatments), n_features)``; None without."""
        if self.treatment_features is None:
            return None
        return self.treatment_features.matrix(self.treatments)

    @property
    def label_dims(self) -> dict[str, int]:
        """Width of each condition: ``{"x": total covariate levels, "t": len(treatments)}``.

        A condition of width 0 is omitted.
        """
        dims = {
            "x": sum(len(levels) for levels in self.covariate_levels.values()),
            "t": len(self.treatments),
        }
        return {key: width for key, width in dims.items() if width}

    @property
    def label_groups(self) -> dict[str, tuple[int, ...]]:
        """The one-hot columns of each label: ``{"x": (levels of each covariate key, in order)}``."""
        return {"x": tuple(len(self.covariate_levels[k]) for k in self.covariate_keys)} if self.covariate_keys else {}

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for ``adata.uns`` that survives ``write_h5ad`` / ``read_h5ad``.

        h5ad cannot store ``None``: an absent ``layer``, ``treatment_key`` or ``dose_key`` is
        simply left out of the dict (and :meth:`from_dict` reads a missing entry as ``None``).
        """
        d: dict[str, Any] = {
            "version": _SETUP_VERSION,
            "covariate_keys": list(self.covariate_keys),
            "control_value": self.control_value,
            "treatments": list(self.treatments),
            "covariate_levels": {k: list(v) for k, v in self.covariate_levels.items()},
        }
        optional = {"layer": self.layer, "treatment_key": self.treatment_key, "dose_key": self.dose_key}
        d.update({key: value for key, value in optional.items() if value is not None})
        if self.treatment_features is not None:
            d["treatment_features"] = self.treatment_features.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnnDataSetup:
        """Rebuild a setup from :meth:`to_dict` output (also after an h5ad round trip)."""
        if not isinstance(d, Mapping) or "control_value" not in d:
            raise DataError(
                f"adata.uns[{UNS_KEY!r}] is not an fcrkit setup; call "
                "fcrkit.setup_anndata(adata, ...) again."
            )
        return cls(
            layer=_optional_str(d.get("layer")),
            treatment_key=_optional_str(d.get("treatment_key")),
            dose_key=_optional_str(d.get("dose_key")),
            covariate_keys=_str_tuple(d.get("covariate_keys", ())),
            control_value=str(d["control_value"]),
            treatments=_str_tuple(d.get("treatments", ())),
            covariate_levels=dict(d.get("covariate_levels", {})),
            treatment_features=(TreatmentFeatures.from_dict(d["treatment_features"])
                                if d.get("treatment_features") is not None else None),
        )

    def encode_labels(self, obs: pd.DataFrame) -> dict[str, EncodedLabel]:
        """Encode the label columns of ``obs``: ``{"x": ..., "t": ...}``, each an :class:`EncodedLabel`.

        ``"x"`` holds one entry per covariate column (value 1), ``"t"`` one per treatment part (its
        dose); their dense forms (``np.asarray``) are the ``(n, n_x)`` and ``(n, n_t)`` float32
        arrays of the module docstring, which are never built here.

        Raises:
            DataError: a column is missing or has missing values, a covariate level or treatment
                was not seen by :func:`setup_anndata`, or a dose is invalid.
        """
        labels: dict[str, np.ndarray] = {}
        if self.covariate_keys:
            labels["x"] = self._encode_covariates(obs)
        if self.treatments:
            labels["t"] = self._encode_treatments(obs)
        return {key: value for key, value in labels.items() if value.width}

    def condition_codes(self, obs: pd.DataFrame) -> np.ndarray:
        """An int64 id per cell of its (covariates..., treatment label) combination.

        Ids number the distinct combinations in sorted order. The treatment label is canonical:
        the parts of a combination are sorted (``B+A`` is ``A+B``) and control parts dropped (a
        label of only controls is ``control_value``). Doses are not part of the condition.
        """
        arrays = [_label_strings(obs, key, "covariate") for key in self.covariate_keys]
        if self.treatment_key is not None:
            arrays.append(self._canonical_treatments(obs))
        if not arrays:
            return np.zeros(len(obs), dtype=np.int64)
        codes, _ = pd.MultiIndex.from_arrays(arrays).factorize(sort=True)
        return codes.astype(np.int64)

    # -- covariates -------------------------------------------------------------------------------

    def _encode_covariates(self, obs: pd.DataFrame) -> EncodedLabel:
        offsets = np.cumsum([0, *(len(self.covariate_levels[key]) for key in self.covariate_keys)])
        codes = [self._codes(obs, key) + offset for key, offset in zip(self.covariate_keys, offsets, strict=False)]
        index = np.stack(codes, axis=1).astype(np.int64, copy=False)
        return EncodedLabel(index, np.ones(index.shape, dtype=np.float32), int(offsets[-1]))

    def _codes(self, obs: pd.DataFrame, key: str) -> np.ndarray:
        """Each cell's position among the levels of covariate ``key``."""
        levels = self.covariate_levels[key]
        values = _label_strings(obs, key, "covariate")
        codes = pd.Categorical(values, categories=levels).codes
        unseen = np.unique(values[codes < 0])
        if unseen.size:
            raise DataError(
                f"covariate column {key!r} has level(s) {listing(unseen)} that were not seen by "
                f"setup_anndata (known levels: {listing(levels)}). Set up the model on data that "
                "contains them, or drop those cells."
            )
        return codes.astype(np.int64)

    # -- treatments -------------------------------------------------------------------------------

    def _encode_treatments(self, obs: pd.DataFrame) -> EncodedLabel:
        assert self.treatment_key is not None
        arrays = [_label_strings(obs, self.treatment_key, "treatment")]
        if self.dose_key is not None:
            arrays.append(self._dose_values(obs, arrays[0]))
        codes, pairs, first = _factorize_rows(arrays)
        parts = [split_treatment(label, self.treatment_key) for label, *_ in pairs]
        self._check_known_treatments(parts)
        position = {name: j for j, name in enumerate(self.treatments)}
        cells = obs.index[first]  # a cell of each distinct (label, dose), for messages
        rows, columns, values = [], [], []  # the entries of each distinct (label, dose): never a vocabulary row
        for row, ((label, *dose), names) in enumerate(zip(pairs, parts, strict=True)):
            doses = parse_dose(dose[0] if dose else 1.0, len(names), label=label, column=self.dose_key, cell=cells[row])
            for name, amount in zip(names, doses, strict=True):
                if name != self.control_value:
                    rows.append(row)
                    columns.append(position[name])
                    values.append(amount)
        table = EncodedLabel.from_entries(rows, columns, values, len(pairs), len(self.treatments))
        return EncodedLabel(table.index[codes], table.value[codes], table.width)

    def _dose_values(self, obs: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
        """The doses of the cells with treatment ``labels``; a control's may be missing: controls need no dose."""
        key = self.dose_key
        column = _obs_column(obs, key, "dose", allow_missing=True)
        missing = column.isna().to_numpy()
        if missing.any():
            codes, uniques = pd.factorize(labels)
            control = np.array([self._canonical(label) == self.control_value for label in uniques])[codes]
            treated = missing & ~control
            if treated.any():
                first = int(np.flatnonzero(treated)[0])
                raise DataError(
                    f"dose column {key!r} has {int(treated.sum())} missing value(s) (NaN) among treated cells "
                    f"(the first: cell {obs.index[first]!r}, treatment {labels[first]!r}). Treated cells need a "
                    "dose: fill them in, or leave those treated cells out; control cells need no dose (theirs "
                    "may stay missing)."
                )
            if isinstance(column.dtype, pd.CategoricalDtype):
                column = column.astype(object)
            column = column.where(~missing, 0)  # a control's dose is never used
        return _dose_array(column)

    def _check_known_treatments(self, parts: Iterable[tuple[str, ...]]) -> None:
        """Refuse a treatment part (of the split labels ``parts``) that setup_anndata did not see."""
        known = set(self.treatments) | {self.control_value}
        seen = {p for label in parts for p in label}
        unseen = seen - known
        if unseen:
            raise DataError(
                f"treatment column {self.treatment_key!r} has treatment(s) {listing(unseen)} that "
                f"were not seen by setup_anndata (known treatments: {listing(self.treatments)}; "
                f"control: {self.control_value!r}).{did_you_mean(min(unseen), known)}"
            )

    def _canonical_treatments(self, obs: pd.DataFrame) -> np.ndarray:
        assert self.treatment_key is not None
        values = _label_strings(obs, self.treatment_key, "treatment")
        codes, uniques = pd.factorize(values)
        canonical = np.array([self._canonical(label) for label in uniques], dtype=object)
        return canonical[codes]

    def _canonical(self, label: str) -> str:
        parts = sorted(p for p in split_treatment(label, self.treatment_key) if p != self.control_value)
        return COMBINATION_SEP.join(parts) if parts else self.control_value


# -- registration -----------------------------------------------------------------------------------


def setup_anndata(
    adata: AnnData,
    layer: str | None = None,
    treatment_key: str | None = None,
    dose_key: str | None = None,
    covariate_keys: str | Iterable[str] = (),
    control_value: str = "control",
    treatment_features: pd.DataFrame | None = None,
) -> AnnDataSetup:
    """Validate ``adata`` and register which matrix and label columns fcrkit models.

    Args:
        adata: the data; the setup is stored in ``adata.uns["fcrkit"]``.
        layer: layer holding the values to model (``None``: ``adata.X``).
        treatment_key: obs column of treatment labels; combinations are written ``A+B``.
        dose_key: obs column of doses: numbers, or strings like ``"1.0+0.5"`` (one per part).
        covariate_keys: obs column(s) of categorical covariates (a single name is fine).
        control_value: the treatment label of control cells (their ``t`` is all zeros).
        treatment_features: numeric features of the treatments: a DataFrame whose index names single
            treatments (every treatment in the data needs a row; a row for the control is ignored) and
            whose columns are numbers (a gene embedding, a fingerprint ...). The FCR, CPA and LinearRidge
            recipes then embed each treatment from its features, and every row's treatment, seen in the
            data or not, joins the vocabulary, so ``predict`` can name it (see docs/prediction.md).

    Returns:
        The :class:`AnnDataSetup`, also retrievable with :func:`get_setup`.

    Raises:
        ConfigError: an argument has the wrong type.
        DataError: the data do not fit the arguments (missing column or layer, missing labels,
            non-finite values, bad doses, no cells or genes ...). The message names the culprit.
    """
    if not isinstance(adata, AnnData):
        raise ConfigError(f"setup_anndata expects an AnnData, got a {type(adata).__name__}.")
    layer = _optional_key(layer, "layer")
    treatment_key = _optional_key(treatment_key, "treatment_key")
    dose_key = _optional_key(dose_key, "dose_key")
    covariate_keys = _key_tuple(covariate_keys)
    control_value = _control_value(control_value)
    if dose_key is not None and treatment_key is None:
        raise DataError(
            f"dose_key={dose_key!r} was given without treatment_key; doses need a treatment "
            "column: pass treatment_key= as well."
        )
    _check_not_empty(adata)
    check_unique_genes(adata)
    matrix = get_matrix(adata, layer, stream=True)  # a backed X is checked in row blocks, never loaded
    _check_finite(matrix, layer, adata.obs_names)
    treatments = _treatment_vocabulary(adata.obs, treatment_key, control_value)
    features = None
    if treatment_features is not None:
        if treatment_key is None:
            raise ConfigError("treatment_features was given without treatment_key; features describe treatments: "
                              "pass treatment_key= as well.")
        features = _treatment_features(treatment_features, treatments, control_value)
        treatments = tuple(sorted(set(treatments) | set(features.names)))
    setup = AnnDataSetup(
        layer=layer,
        treatment_key=treatment_key,
        dose_key=dose_key,
        covariate_keys=covariate_keys,
        control_value=control_value,
        treatments=treatments,
        covariate_levels={key: _levels(adata.obs, key) for key in covariate_keys},
        treatment_features=features,
    )
    setup.encode_labels(adata.obs)  # validates doses and combination shapes
    adata.uns[UNS_KEY] = setup.to_dict()
    return setup


def get_setup(adata: AnnData) -> AnnDataSetup:
    """The setup registered on ``adata`` by :func:`setup_anndata`."""
    stored = adata.uns.get(UNS_KEY)
    if stored is None:
        raise DataError(
            "this AnnData has not been set up for fcrkit: call fcrkit.setup_anndata(adata, ...) first."
        )
    return AnnDataSetup.from_dict(stored)


def get_matrix(adata: AnnData, layer: str | None, *, stream: bool = False) -> Matrix | DiskMatrix:
    """``adata.X`` (``layer=None``) or ``adata.layers[layer]`` as a dense ndarray or a CSR matrix.

    Other sparse formats (CSC, COO, sparse arrays) are converted to ``scipy.sparse.csr_matrix``.
    With ``stream``, an ``X`` that stays on disk (backed AnnData) comes as a
    :class:`~fcrkit.data.disk.DiskMatrix` instead of being loaded (:func:`check_values` reads it in blocks).
    """
    if stream and (on_disk := disk_matrix(adata, layer)) is not None:
        return on_disk
    if layer is None:
        matrix = adata.X
        if matrix is None:
            raise DataError("adata.X is empty (None); pass layer= to name the layer to model.")
    else:
        if layer not in adata.layers:
            raise DataError(
                f"layer {layer!r} is not in adata.layers (layers: {listing(adata.layers.keys())}); "
                "pass one of them, or layer=None for adata.X."
                f"{did_you_mean(layer, adata.layers.keys())}"
            )
        matrix = adata.layers[layer]
    return as_matrix(matrix)


def as_matrix(matrix: Any) -> Matrix:
    """Convert anything matrix-like to a 2-D dense ndarray or a ``scipy.sparse.csr_matrix``."""
    if hasattr(matrix, "to_memory"):  # anndata's backed sparse datasets
        matrix = matrix.to_memory()
    if sp.issparse(matrix):
        return matrix if isinstance(matrix, sp.csr_matrix) else sp.csr_matrix(matrix)
    array = np.asarray(matrix)
    if array.ndim != 2:
        raise DataError(f"expected a 2-D cells x genes matrix, got an array of shape {array.shape}.")
    return array


# -- value checks ------------------------------------------------------------------------------------


def check_values(
    matrix: Matrix | DiskMatrix,
    input_kind: Literal["counts", "real"],
    *,
    likelihood: str,
    layer: str | None,
    allow_counts: bool = False,
    fix: str | None = None,
) -> None:
    """Refuse a matrix whose values do not fit what a likelihood models.

    Args:
        matrix: dense ndarray, CSR (only the stored values of a CSR are read) or a
            :class:`~fcrkit.data.disk.DiskMatrix` (read in row blocks).
        input_kind: ``"counts"`` refuses negative or non-integer values; ``"real"`` refuses data
            that look like raw counts (all non-negative integers with a maximum above
            :data:`COUNT_LIKE_MAX`).
        likelihood: name of the likelihood, for the message.
        layer: name of the layer, for the message (``None``: ``X``).
        allow_counts: skip the "looks like raw counts" check of ``"real"``.
        fix: what the message tells the user to do (None: how to set the data up for a new model;
            a trained model's checks of new cells say how to give it what it was trained on).

    Raises:
        DataError: naming the likelihood, the layer, an offending value and its cell index.
    """
    if input_kind == "counts":
        _check_counts(matrix, likelihood, layer, fix)
    elif input_kind == "real":
        if not allow_counts:
            _check_not_counts(matrix, likelihood, layer, fix)
    else:
        raise ConfigError(f"input_kind must be 'counts' or 'real', got {input_kind!r}.")


def _check_counts(matrix: Matrix | DiskMatrix, likelihood: str, layer: str | None, fix: str | None) -> None:
    count, row, value = _scan(matrix, _not_count)
    if count:
        fix = fix or ("For log-normalised data use likelihood=\"gaussian\"; if raw counts are in a layer, point "
                      "layer= at it (fcrkit.setup_anndata(adata, layer=\"counts\", ...)).")
        raise DataError(
            f"likelihood {likelihood!r} models non-negative integer counts, but {_matrix_name(layer)} "
            f"holds {value:.6g} (cell index {row}; {count} such value(s)). {fix}"
        )


def _check_not_counts(matrix: Matrix | DiskMatrix, likelihood: str, layer: str | None, fix: str | None) -> None:
    non_counts, _, _ = _scan(matrix, _not_count, stop_early=True)
    largest = _max(matrix)
    if not non_counts and largest > COUNT_LIKE_MAX:
        fix = fix or ("Use a count likelihood (\"nb\", \"zinb\" or \"poisson\"), or log-normalise first (e.g. "
                      "scanpy.pp.normalize_total then scanpy.pp.log1p).")
        raise DataError(
            f"likelihood {likelihood!r} models real-valued (e.g. log-normalised) data, but "
            f"{_matrix_name(layer)} holds only non-negative integers up to {largest:.6g}: it looks "
            f"like raw counts. {fix}"
        )


def check_new_cells(adata: AnnData, layer: str | None, input_kind: Literal["counts", "real"], *, likelihood: str,
                    fix: str) -> None:
    """Refuse cells given to a trained model (to predict, encode or score) unless they are what training took.

    The same checks as :func:`setup_anndata` and model construction make of training data: finite values,
    then :func:`check_values` for ``input_kind``, with ``fix`` saying how to give the model the values it
    was trained on.

    Raises:
        DataError: naming the matrix, an offending value, its cell and ``fix``.
    """
    matrix = get_matrix(adata, layer, stream=True)  # a backed X is read in row blocks
    _check_finite(matrix, layer, adata.obs_names)
    check_values(matrix, input_kind, likelihood=likelihood, layer=layer, fix=fix)


def check_unique_genes(adata: AnnData, what: str = "adata") -> None:
    """Refuse duplicated gene names: fcrkit matches genes by name (load, predict, narrowing to a model's genes).

    Raises:
        DataError: naming a few duplicated names, how many there are, and the fix.
    """
    names = pd.Index(adata.var_names)
    if names.is_unique:
        return
    counts = names[names.duplicated(keep=False)].value_counts(sort=False)
    shown = ", ".join(f"{name!r} ({n}x)" for name, n in list(counts.items())[:5])
    raise DataError(
        f"{what} has {len(counts)} duplicated gene name(s) in var_names: {shown}{' ...' if len(counts) > 5 else ''}. "
        "fcrkit finds genes by name, so each name must be unique: call adata.var_names_make_unique() (and write "
        "the file again if it came from one), then use the same names for training and prediction."
    )


def _check_finite(matrix: Matrix | DiskMatrix, layer: str | None, obs_names: pd.Index) -> None:
    if not np.issubdtype(matrix.dtype, np.inexact):
        return  # integer and boolean matrices hold only finite values
    count, row, value = _scan(matrix, lambda v: ~np.isfinite(v))
    if count:
        raise DataError(
            f"{_matrix_name(layer)} has {count} non-finite value(s) (NaN or infinite); the first, "
            f"{value}, is in cell {obs_names[row]!r} (index {row}). Remove or impute them first."
        )


def _not_count(values: np.ndarray) -> np.ndarray:
    """Mask of values that are not non-negative integers (NaN included)."""
    if values.dtype == np.bool_:
        return np.zeros(values.shape, dtype=bool)
    if np.issubdtype(values.dtype, np.integer):
        return values < 0
    return ~((values >= 0) & (values == np.floor(values)))


def _scan(matrix: Matrix | DiskMatrix, is_bad: Any, *, stop_early: bool = False) -> tuple[int, int, Any]:
    """Count the values where ``is_bad`` holds; return ``(count, first row, first value)``.

    CSR matrices are scanned through their stored values only; dense ones in row blocks, so no
    full-size temporary is made; matrices on disk block by block as read. With ``stop_early`` the
    count stops at the first bad block.
    """
    if isinstance(matrix, DiskMatrix):
        total, first = 0, (-1, None)
        for start, block in matrix.blocks():
            count, row, value = _scan(block, is_bad, stop_early=stop_early)
            if count and total == 0:
                first = (start + row, value)
            total += count
            if total and stop_early:
                break
        return total, first[0], first[1]
    total, first = 0, (-1, None)
    if sp.issparse(matrix):  # in slices too: a mask of a 100M-value CSR is itself 100 MB
        for start in range(0, matrix.data.size, _BLOCK_ELEMENTS):
            bad = is_bad(matrix.data[start : start + _BLOCK_ELEMENTS])
            count = int(bad.sum())
            if count and total == 0:
                position = start + int(np.argmax(bad))
                first = (int(np.searchsorted(matrix.indptr, position, side="right") - 1), matrix.data[position])
            total += count
            if total and stop_early:
                break
        return total, first[0], first[1]
    for start, block in _row_blocks(matrix):
        bad = is_bad(block)
        count = int(bad.sum())
        if count and total == 0:
            r, c = np.unravel_index(int(np.argmax(bad)), bad.shape)
            first = (start + int(r), block[r, c])
        total += count
        if total and stop_early:
            break
    return total, first[0], first[1]


def _row_blocks(matrix: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    step = max(1, _BLOCK_ELEMENTS // max(1, matrix.shape[1]))
    for start in range(0, matrix.shape[0], step):
        yield start, matrix[start : start + step]


def _max(matrix: Matrix | DiskMatrix) -> float:
    if isinstance(matrix, DiskMatrix):
        return max((_max(block) for _, block in matrix.blocks()), default=0.0)
    values = matrix.data if sp.issparse(matrix) else matrix
    return float(values.max()) if values.size else 0.0


def _matrix_name(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


# -- argument and column helpers --------------------------------------------------------------------


def _optional_key(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"{name} must be a string or None, got {value!r} ({type(value).__name__}).")


def _key_tuple(keys: Any) -> tuple[str, ...]:
    if keys is None:
        return ()
    if isinstance(keys, str):
        return (keys,)
    try:
        keys = tuple(keys)
    except TypeError:
        raise ConfigError(
            f"covariate_keys must be a column name or a list of them, got {keys!r}."
        ) from None
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"covariate_keys must be strings; got {bad[0]!r} ({type(bad[0]).__name__}).")
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError(f"covariate_keys lists {listing(duplicates)} more than once.")
    return keys


def _control_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise ConfigError(f"control_value must be a string, got {value!r} ({type(value).__name__}).")
    return str(value)


def _check_not_empty(adata: AnnData) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(
            f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); fcrkit needs at "
            "least one cell and one gene. Check the filtering that produced it."
        )


def _obs_column(obs: pd.DataFrame, key: str, role: str, *, allow_missing: bool = False) -> pd.Series:
    """``obs[key]``, refusing a missing column or (unless ``allow_missing``) missing values with a helpful DataError."""
    if key not in obs.columns:
        raise DataError(
            f"{role} key {key!r} is not a column of adata.obs (columns: {listing(obs.columns)})."
            f"{did_you_mean(key, obs.columns)}"
        )
    column = obs[key]
    missing = 0 if allow_missing else int(column.isna().sum())
    if missing:
        raise DataError(
            f"{role} column {key!r} has {missing} missing value(s) (NaN) among {len(column)} cells; "
            f"fill them or drop those cells, e.g. adata = adata[adata.obs[{key!r}].notna()].copy()."
        )
    return column


def _label_strings(obs: pd.DataFrame, key: str, role: str) -> np.ndarray:
    """The labels of column ``key`` as an object array of str (categorical or numeric alike)."""
    return _obs_column(obs, key, role).astype(str).to_numpy(dtype=object)


def _dose_array(column: pd.Series) -> np.ndarray:
    """Doses as floats (numeric column) or strings (one dose or ``"1+0.5"`` per cell)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64)
    return column.astype(str).to_numpy(dtype=object)


def _levels(obs: pd.DataFrame, key: str) -> tuple[str, ...]:
    return tuple(sorted(set(_label_strings(obs, key, "covariate"))))


def _treatment_vocabulary(obs: pd.DataFrame, key: str | None, control_value: str) -> tuple[str, ...]:
    if key is None:
        return ()
    labels = pd.unique(_label_strings(obs, key, "treatment"))
    parts = {p for label in labels for p in split_treatment(label, key)}
    if control_value not in parts:
        raise DataError(
            f"control_value {control_value!r} does not occur in treatment column {key!r} "
            f"(values: {listing(labels)}); pass control_value= one of them."
            f"{did_you_mean(control_value, labels)}"
        )
    return tuple(sorted(parts - {control_value}))


def _treatment_features(table: Any, used: tuple[str, ...], control_value: str) -> TreatmentFeatures:
    """Check a ``treatment_features`` table against the treatments the data use; each error names the fix."""
    if isinstance(table, pd.Series) or not isinstance(table, pd.DataFrame):
        raise ConfigError(f"treatment_features must be a pandas DataFrame (rows = treatment names, columns = "
                          f"numeric features), got a {type(table).__name__}; e.g. pd.DataFrame(array, "
                          "index=treatment_names).")
    names = pd.Index(table.index.astype(str))
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise DataError(f"treatment_features has shape {table.shape}; it needs one row per treatment and at least "
                        "one feature column.")
    if not names.is_unique:
        dupes = sorted(set(names[names.duplicated()]))
        raise DataError(f"treatment_features has duplicated row(s) {listing(dupes)}: one row per treatment; drop "
                        "or average the duplicates (e.g. table.groupby(level=0).mean()).")
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])
            or pd.api.types.is_bool_dtype(table[c])]
    if text:
        raise DataError(f"treatment_features column {text[0]!r} is not numeric (dtype {table[text[0]].dtype}); "
                        "features must be numbers: encode or drop that column.")
    combos = [n for n in names if COMBINATION_SEP in n]
    if combos:
        raise DataError(f"treatment_features row {combos[0]!r} is a combination; give rows for single treatments "
                        "only (a combination is embedded from its parts).")
    keep = names != control_value  # a control has no treatment entry, so it needs no features
    values = table.to_numpy(dtype=np.float64)[keep]
    names = names[keep]
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(f"treatment_features has {int(bad.sum())} non-finite value(s) (NaN or infinite); the first, "
                        f"{values[row, col]}, is treatment {names[row]!r}, column {table.columns[col]!r}. Impute "
                        "or drop them.")
    missing = sorted(set(used) - set(names))
    if missing:
        raise DataError(f"treatment_features has no row for treatment(s) {listing(missing)} of the data; every "
                        "treatment the cells receive needs a row (add the rows, or drop those cells)."
                        f"{did_you_mean(missing[0], names)}")
    return TreatmentFeatures(tuple(names), tuple(str(c) for c in table.columns), values)


def split_treatment(label: str, column: str | None = None) -> tuple[str, ...]:
    """The parts of a treatment label: ``"A+B"`` -> ``("A", "B")`` (whitespace stripped)."""
    parts = tuple(part.strip() for part in str(label).split(COMBINATION_SEP))
    if not all(parts):
        raise DataError(
            f"treatment {label!r} in obs column {column!r} has an empty part; write combinations "
            "as 'A+B' with no leading, trailing or doubled '+'."
        )
    return parts


def parse_dose(
    value: Any, n_parts: int, *, label: str, column: str | None, cell: Any
) -> tuple[float, ...]:
    """One non-negative dose per part of a treatment.

    ``value`` is a number (applied to every part) or a string of one number or of one number per
    part joined by ``+`` (``"1.0+0.5"``).
    """
    where = f"cell {cell!r} (treatment {label!r}, dose column {column!r})"
    texts = _DOSE_SEP.split(value) if isinstance(value, str) else [value]
    try:
        doses = tuple(float(text) for text in texts)
    except ValueError:
        raise DataError(
            f"dose {value!r} of {where} is not a number; doses are numbers, or one number per "
            "part of a combination joined by '+' (e.g. '1.0+0.5')."
        ) from None
    if len(doses) == 1:
        doses = doses * n_parts
    elif len(doses) != n_parts:
        raise DataError(
            f"dose {value!r} of {where} has {len(doses)} parts but the treatment has {n_parts}; "
            "give one dose per part, or a single dose for all parts."
        )
    if not all(np.isfinite(d) and d >= 0 for d in doses):
        raise DataError(f"dose {value!r} of {where} must be finite and non-negative.")
    return doses


def _factorize_rows(arrays: list[np.ndarray]) -> tuple[np.ndarray, list[tuple], np.ndarray]:
    """Codes of the distinct rows of parallel arrays, the rows, and each row's first position."""
    codes, uniques = pd.MultiIndex.from_arrays(arrays).factorize()
    _, first = np.unique(codes, return_index=True)
    return codes, list(uniques), first


def _str_tuple(values: Any) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(str(v) for v in np.asarray(values, dtype=object).ravel())


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
