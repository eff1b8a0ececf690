"""Simulated perturbation data with known latents.

The worlds, all ``latent -> random leaky-ReLU network -> softmax gene fractions -> counts``:

``basic``
    the small world the demo and the tests use: one latent per cell whose mean depends on its cell
    type and (sparsely) on its treatment, negative-binomial counts with varying library sizes.
``interaction``
    the FCR world (see ``FCR.md``): three latent blocks ``z_x``, ``z_t`` and ``z_tx`` drawn from
    condition-dependent Gaussians whose means *and* scales vary with the covariate, the treatment and
    the (covariate, treatment) pair, so that each block is identifiable in principle and carries
    different label information. :func:`hard_interaction` is its harder preset (more labels, a
    more non-linear mixing, sparser counts).
``sparse_shift``
    the sVAE world: each treatment shifts 1-3 latents by ±N(5, 0.5), controls none; the true
    targets and shifts are stored for target-identification metrics.
``feature_effects``
    unseen perturbations: each treatment's latent shift is one fixed linear map of its known
    features (stored with the data), so a model given the features can predict a held-out treatment.
``contrastive``
    the contrastiveVI world: background cells with a shared latent only, target cells with a
    salient latent too (subgroups), for comparative models such as ``ContrastiveVI``.
``sparse_additive``
    the SAMS-VAE world: single perturbations each shift 1-2 latents, double perturbations shift by
    the sum of their singles' shifts; for predicting combinations never seen from their parts.

The pieces they share (the random mixing network, its forward pass, library sizes and the
observation noise) are the small private functions below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from fcrkit.errors import ConfigError, did_you_mean, listing

#: Block names of :func:`interaction`, in the order of ``obsm["z_true"]``.
BLOCKS = ("x", "t", "tx")
#: Default block sizes of :func:`interaction`.
DEFAULT_DIMS = {"x": 2, "t": 2, "tx": 2}
#: Observation models of :func:`interaction`.
LIKELIHOODS = ("nb", "poisson", "gaussian")
#: Settings of :func:`interaction` for the harder world of :func:`hard_interaction`.
HARD_INTERACTION: dict[str, Any] = {
    "n_cells": 6000,
    "n_genes": 200,
    "n_covariates": 5,
    "n_treatments": 5,
    "dims": {"x": 2, "t": 2, "tx": 2},
    "mixing_gain": 2.5,
    "library_size": 50000.0,
}

# Constants of the interaction world (documented in ``interaction``'s docstring).
_MEAN_SD = 2.0  # condition means ~ N(0, 2^2): conditions lie about two noise scales apart
_SCALE_RANGE = (0.5, 1.5)  # condition scales log-uniform here: variances vary up to 9-fold
_HIDDEN_LAYERS = 2  # hidden layers of the mixing network
_HIDDEN_FACTOR = 4  # hidden width = max(4 * total latent dim, 16)
_MIN_HIDDEN = 16
_HIDDEN_BIAS_SD = 1.0  # hidden biases put the leaky-ReLU kinks inside the latent cloud
_LOGIT_GAIN = 1.0  # gain of the last (orthogonal) layer
_GENE_BIAS_SD = 1.0  # per-gene baseline logits: genes differ in mean expression
_N_REFERENCE = 4096  # latents on which the mean hidden contribution to each gene logit is removed
_LIBRARY_LOG_SD = 0.3  # library sizes log-normal with this log-scale sd (CV about 0.3)


def _leaky_relu(a: np.ndarray, slope: float = 0.2) -> np.ndarray:
    return np.where(a > 0, a, slope * a)


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"simulate: {name}={value!r} must be a positive integer.")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"simulate: seed={seed!r} must be a non-negative integer.")


def _check_positive_real(**values: float) -> None:
    for name, value in values.items():
        if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
                or not math.isfinite(value) or value <= 0):
            raise ConfigError(f"simulate: {name}={value!r} must be a positive finite number.")


def _random_weights(
    rng: np.random.Generator, widths: Sequence[int], gains: Sequence[float], orthogonal: bool = False
) -> list[np.ndarray]:
    """Weights of a random MLP ``widths[0] -> ... -> widths[-1]``, one matrix per layer.

    Entries are ``N(0, gain^2 / n_in)``. With ``orthogonal`` each matrix is replaced by the nearest
    (semi-)orthogonal one scaled to the typical singular value of such a Gaussian matrix,
    ``gain * sqrt(max(n_in, n_out) / n_in)``: all its singular values are equal, so a layer that
    widens is injective and perfectly conditioned.
    """
    weights = []
    for n_in, n_out, gain in zip(widths[:-1], widths[1:], gains):
        w = rng.normal(0.0, gain / np.sqrt(n_in), size=(n_in, n_out))
        if orthogonal:
            u, _, vt = np.linalg.svd(w, full_matrices=False)
            w = gain * np.sqrt(max(n_in, n_out) / n_in) * (u @ vt)
        weights.append(w)
    return weights


def _mlp(
    z: np.ndarray, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Forward pass: leaky-ReLU (slope 0.2) after every layer but the last (no biases if None)."""
    h = z
    for i, w in enumerate(weights):
        h = h @ w
        if biases is not None:
            h = h + biases[i]
        if i < len(weights) - 1:
            h = _leaky_relu(h)
    return h


def _softmax(logits: np.ndarray) -> np.ndarray:
    fractions = np.exp(logits - logits.max(axis=1, keepdims=True))
    return fractions / fractions.sum(axis=1, keepdims=True)


def _library_sizes(rng: np.random.Generator, n_cells: int, library_size: float) -> np.ndarray:
    """Per-cell library sizes, log-normal around ``library_size``; shape ``(n_cells, 1)``."""
    return rng.lognormal(np.log(library_size), _LIBRARY_LOG_SD, size=(n_cells, 1))


def _observe(
    rng: np.random.Generator,
    fractions: np.ndarray,
    library: np.ndarray,
    likelihood: str,
    dispersion: float,
    library_size: float,
) -> np.ndarray:
    """Observations of cells with these gene fractions (see ``interaction`` for the three models)."""
    if likelihood == "gaussian":  # log1p-normalised expression plus noise; libraries normalised out
        clean = np.log1p(library_size * fractions)
        return (clean + rng.normal(0.0, 1.0 / np.sqrt(dispersion), size=clean.shape)).astype(np.float32)
    mean = library * fractions
    if likelihood == "poisson":
        counts = rng.poisson(mean)
    else:
        counts = rng.poisson(rng.gamma(dispersion, mean / dispersion))  # gamma-Poisson = NB
    return counts.astype(np.int32)


def _nb_cells(rng: np.random.Generator, z: np.ndarray, n_genes: int, library_size: float, dispersion: float,
              obs: Mapping[str, Any]) -> AnnData:
    """An AnnData of NB counts from latents ``z``: a random ``d -> 4d -> genes`` leaky-ReLU network to gene
    fractions, log-normal library sizes, ``obs`` columns, cells ``cell_i`` and genes ``gene_g``."""
    n_cells, n_latent = z.shape
    weights = _random_weights(rng, [n_latent, 4 * n_latent, n_genes], gains=[1.0, 1.5])
    fractions = _softmax(_mlp(z, weights))
    library = _library_sizes(rng, n_cells, library_size)
    counts = _observe(rng, fractions, library, "nb", dispersion, library_size)
    frame = pd.DataFrame(dict(obs), index=[f"cell_{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    return AnnData(sp.csr_matrix(counts), obs=frame, var=var)


def basic(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_latent: int = 6,
    n_cell_types: int = 4,
    n_treatments: int = 2,
    *,
    control_fraction: float = 0.5,
    library_size: float = 2000.0,
    dispersion: float = 5.0,
    seed: int = 0,
) -> AnnData:
    """Counts from a latent shaped by cell type and treatment.

    ``z = mu[cell type] + shift[treatment] + N(0, I)`` (each treatment shifts about a third of the
    latents; controls none), then gene fractions ``softmax(W2 leaky_relu(W1 z))``, library sizes
    log-normal around ``library_size``, and ``y ~ NB(mean = library * fractions, theta = dispersion)``.

    Returns:
        An AnnData with CSR integer counts in ``X``, ``obs["cell_type"]`` (``type_0`` ...),
        ``obs["treatment"]`` (``control``, ``drug_0`` ...), and the true latent in
        ``obsm["z_true"]``.
    """
    _check_positive(n_cells=n_cells, n_genes=n_genes, n_latent=n_latent, n_cell_types=n_cell_types,
                    n_treatments=n_treatments)
    if not 0.0 <= control_fraction <= 1.0:
        raise ConfigError(f"simulate: control_fraction={control_fraction!r} must be in [0, 1].")
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(n_cell_types, size=n_cells)
    treated = rng.random(n_cells) >= control_fraction
    drug = np.where(treated, rng.integers(n_treatments, size=n_cells), -1)

    type_means = rng.normal(0.0, 2.0, size=(n_cell_types, n_latent))
    mask = rng.random((n_treatments, n_latent)) < 1 / 3
    mask[np.arange(n_treatments), rng.integers(n_latent, size=n_treatments)] = True  # every drug acts
    shifts = mask * rng.choice([-1.0, 1.0], size=mask.shape) * rng.normal(2.5, 0.5, size=mask.shape)
    z = type_means[cell_type] + rng.normal(size=(n_cells, n_latent))
    z[treated] += shifts[drug[treated]]

    adata = _nb_cells(rng, z, n_genes, library_size, dispersion, {
        "cell_type": pd.Categorical([f"type_{k}" for k in cell_type]),
        "treatment": pd.Categorical(np.where(treated, [f"drug_{d}" for d in drug], "control")),
    })
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.uns["simulation"] = {"kind": "basic", "seed": seed, "treatment_targets": mask.astype(np.int8)}
    return adata


def _block_dims(dims: Mapping[str, int] | Sequence[int] | None) -> dict[str, int]:
    """``dims`` as ``{"x": d_x, "t": d_t, "tx": d_tx}`` (missing mapping keys take the defaults)."""
    if dims is None:
        return dict(DEFAULT_DIMS)
    if isinstance(dims, Mapping):
        unknown = [k for k in dims if k not in BLOCKS]
        if unknown:
            raise ConfigError(
                f"simulate: dims has unknown block {unknown[0]!r}; the blocks are {listing(BLOCKS)}."
                f"{did_you_mean(unknown[0], BLOCKS)}"
            )
        out = {**DEFAULT_DIMS, **dims}
    elif isinstance(dims, Sequence) and not isinstance(dims, str):
        if len(dims) != len(BLOCKS):
            raise ConfigError(
                f"simulate: dims={tuple(dims)!r} must give {len(BLOCKS)} sizes, for the blocks "
                f"{', '.join(BLOCKS)} in that order (or be a mapping such as {DEFAULT_DIMS!r})."
            )
        out = dict(zip(BLOCKS, dims))
    else:
        raise ConfigError(
            f"simulate: dims={dims!r} must be a mapping such as {DEFAULT_DIMS!r} or a tuple "
            "(d_x, d_t, d_tx)."
        )
    _check_positive(**{f"dims[{k!r}]": out[k] for k in BLOCKS})
    return {k: int(out[k]) for k in BLOCKS}


def _balanced_labels(
    rng: np.random.Generator, n_cells: int, n_covariates: int, n_treatments: int, control_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Covariate codes and treatment codes (0 = control, 1 + d = ``drug_d``), in shuffled order.

    ``round(control_fraction * n_cells)`` controls are dealt round-robin over the covariates and the
    other cells round-robin over every (covariate, drug) pair, so group sizes differ by at most one.
    """
    n_control = int(round(control_fraction * n_cells))
    n_treated = n_cells - n_control
    n_pairs = n_covariates * n_treatments
    if n_control < n_covariates or n_treated < n_pairs:
        need = max(math.ceil(n_covariates / control_fraction), math.ceil(n_pairs / (1 - control_fraction)))
        raise ConfigError(
            f"simulate: n_cells={n_cells!r} is too few to give every one of the {n_covariates} "
            f"covariate(s) controls ({n_control} with control_fraction={control_fraction!r}) and "
            f"every one of the {n_pairs} (covariate, drug) pairs a cell ({n_treated} treated); use "
            f"at least about {need} cells."
        )
    pair = np.arange(n_treated) % n_pairs
    covariate = np.concatenate([np.arange(n_control) % n_covariates, pair % n_covariates])
    treatment = np.concatenate([np.zeros(n_control, dtype=np.int64), 1 + pair // n_covariates])
    order = rng.permutation(n_cells)
    return covariate[order], treatment[order]


def _condition_params(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Means ~ N(0, _MEAN_SD^2) and scales log-uniform in _SCALE_RANGE, one per condition and dim."""
    means = rng.normal(0.0, _MEAN_SD, size=shape)
    lo, hi = np.log(_SCALE_RANGE[0]), np.log(_SCALE_RANGE[1])
    scales = np.exp(rng.uniform(lo, hi, size=shape))
    return means, scales


def _draw_blocks(
    covariate: np.ndarray,
    treatment: np.ndarray,
    eps: np.ndarray,
    dims: Mapping[str, int],
    means: Mapping[str, np.ndarray],
    scales: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The blocks ``mean[condition] + scale[condition] * eps`` (``eps`` split in [x, t, tx] order)."""
    index = {"x": (covariate,), "t": (treatment,), "tx": (covariate, treatment)}
    parts = np.split(eps, np.cumsum([dims[k] for k in BLOCKS])[:-1], axis=1)
    return {k: means[k][index[k]] + scales[k][index[k]] * e for k, e in zip(BLOCKS, parts)}


def _mixing_input(blocks: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[z_x, z_tx, z_t]``: the order of FCR's decoder input."""
    return np.concatenate([blocks["x"], blocks["tx"], blocks["t"]], axis=1)


def _mixing_network(
    rng: np.random.Generator, n_latent: int, n_genes: int, reference: np.ndarray, gain: float = 1.0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights and biases of ``interaction``'s mixing MLP (see its docstring); ``gain`` of the hidden layers.

    The gene biases are ``N(0, _GENE_BIAS_SD^2)`` baselines minus the mean logit that the hidden
    layers give each gene over the ``reference`` latents, so that the baselines, not the mean of the
    leaky-ReLU activations, set how much genes differ in expression.
    """
    hidden = max(_HIDDEN_FACTOR * n_latent, _MIN_HIDDEN)
    widths = [n_latent] + [hidden] * _HIDDEN_LAYERS + [n_genes]
    weights = _random_weights(rng, widths, gains=[gain] * _HIDDEN_LAYERS + [_LOGIT_GAIN], orthogonal=True)
    biases = [rng.normal(0.0, _HIDDEN_BIAS_SD, size=hidden) for _ in range(_HIDDEN_LAYERS)]
    offset = _mlp(reference, weights, biases + [np.zeros(n_genes)]).mean(axis=0)
    biases.append(rng.normal(0.0, _GENE_BIAS_SD, size=n_genes) - offset)
    return weights, biases


def interaction(
    n_cells: int = 3000,
    n_genes: int = 200,
    n_covariates: int = 3,
    n_treatments: int = 3,
    dims: Mapping[str, int] | Sequence[int] | None = None,
    *,
    seed: int = 0,
    likelihood: str = "nb",
    control_fraction: float = 0.3,
    library_size: float = 3000.0,
    dispersion: float = 5.0,
    mixing_gain: float = 1.0,
) -> AnnData:
    """The FCR world: three latent blocks with condition-dependent Gaussian priors, mixed into genes.

    **Labels.** One covariate ``x`` in ``obs["covariate"]`` with levels ``cov_0 .. cov_{C-1}``
    (``C = n_covariates``) and a treatment ``t`` in ``obs["treatment"]`` with levels ``control``
    (code 0) and ``drug_0 .. drug_{D-1}`` (codes 1..D, ``D = n_treatments``). Exactly
    ``n_0 = round(control_fraction * n_cells)`` cells are controls, dealt round-robin over the
    covariates; the other cells are dealt round-robin over all ``C * D`` (covariate, drug) pairs; the
    cell order is then shuffled. So every condition (x, t), controls included, has cells, and group
    sizes differ by at most one.

    **Conditions.** For every block a mean and a scale per condition and latent dimension:

    - ``z_x``: ``m_x[x], s_x[x]``, shape ``(C, d_x)``;
    - ``z_t``: ``m_t[t], s_t[t]``, shape ``(D + 1, d_t)`` (row 0 is the control condition);
    - ``z_tx``: ``m_tx[x, t], s_tx[x, t]``, shape ``(C, D + 1, d_tx)``, drawn independently for
      every pair, controls included: a pure interaction, with no additive structure in x and t
      (being a function of the pair, ``z_tx`` still tells something about x and about t alone).

    Every mean is ``N(0, 2^2)`` (conditions lie about two noise scales apart, so each block carries
    its labels' information) and every scale is log-uniform on ``[0.5, 1.5]`` (variances vary up to
    nine-fold across conditions: the variability that identifiability of conditional-prior models,
    iVAE-style, rests on).

    **Latents.** Per cell, independently,
    ``z_x ~ N(m_x[x], diag s_x[x]^2)``, ``z_t ~ N(m_t[t], diag s_t[t]^2)``,
    ``z_tx ~ N(m_tx[x, t], diag s_tx[x, t]^2)`` (a control draws ``z_t`` and ``z_tx`` from its own
    (x, control) condition).

    **Mixing.** ``z = [z_x, z_tx, z_t]`` (the FCR decoder's order; total size ``d``) goes through a
    random MLP with two hidden layers of width ``h = max(4 d, 16)`` and leaky-ReLU (slope 0.2):
    ``a_1 = lrelu(z W_1 + b_1)``, ``a_2 = lrelu(a_1 W_2 + b_2)``, ``logits = a_2 W_3 + b_3``.
    Each ``W`` (``n_in x n_out``) is the (semi-)orthogonal polar factor of an ``N(0, 1/n_in)``
    matrix times ``sqrt(max(n_in, n_out) / n_in)`` (all singular values equal, so every layer is
    perfectly conditioned); the hidden biases are ``N(0, 1)`` (they put the kinks inside the latent
    cloud, whose spread per dimension is about 2). The gene biases are
    ``b_3 = c - mean_r(a_2(z_r) W_3)`` with baselines ``c_g ~ N(0, 1)`` (genes differ in mean
    expression) and the mean taken over 4096 reference latents ``z_r`` drawn like the cells' latents
    but from uniformly chosen conditions: without it the mean of the leaky-ReLU activations would
    give a few genes most of the counts. Leaky-ReLU is invertible and the layers widen (``d <= h``,
    and ``h <= n_genes`` by default) with full rank, so ``z -> logits`` is injective; softmax loses
    only the direction of adding a constant to every logit, so with ``n_genes > d`` the gene
    fractions ``p = softmax(logits)`` determine ``z`` generically. The map is moderately
    non-linear: with the defaults a linear function of ``z`` explains about 80-90% of the variance
    of a typical gene's noise-free log-expression.

    ``mixing_gain`` multiplies both hidden layers' weights (1 by default): with hidden biases kept
    ``N(0, 1)``, a larger gain moves the kinks towards the centre of the cloud and, leaky-ReLU being
    positively homogeneous, widens the logits about ``mixing_gain²``-fold, which makes the
    softmax, and so the map to gene fractions, more non-linear and the counts sparser
    (:func:`hard_interaction` uses 2.5).

    **Observations.** Library sizes ``l ~ LogNormal(log library_size, 0.3^2)`` per cell (CV about
    0.3), then, by ``likelihood``:

    - ``"nb"``: ``y_g ~ NB(mean = l p_g, theta = dispersion)``, sampled as gamma-Poisson
      ``y_g ~ Poisson(Gamma(shape = theta, scale = l p_g / theta))``;
    - ``"poisson"``: ``y_g ~ Poisson(l p_g)``;
    - ``"gaussian"``: log-normalised expression with Gaussian noise,
      ``y_g = log1p(library_size * p_g) + N(0, 1 / dispersion)``: cells normalised to the common
      total ``library_size`` (so ``l`` plays no part), noise sd ``1 / sqrt(dispersion)``, which is
      the log-scale sd of the NB at large means. Values may be negative.

    **Randomness.** ``seed`` seeds three independent streams: the condition parameters, the mixing
    network and the cells (labels, latents, libraries, noise). So the world (means, scales,
    network) does not depend on ``n_cells``, the condition parameters not on ``n_genes``, and the
    labels and latents are the same for every ``likelihood``.

    Args:
        n_cells: number of cells; at least enough for every condition to have one.
        n_genes: number of genes (keep it above ``sum(dims)`` for an injective world).
        n_covariates: levels of the covariate ``x``.
        n_treatments: drugs, besides the control.
        dims: block sizes: a mapping with keys among ``"x"``, ``"t"``, ``"tx"`` (missing keys take
            the default ``{"x": 2, "t": 2, "tx": 2}``) or a tuple ``(d_x, d_t, d_tx)``.
        seed: non-negative integer seed.
        likelihood: ``"nb"`` (default), ``"poisson"`` or ``"gaussian"``.
        control_fraction: fraction of control cells, in ``(0, 1)``.
        library_size: typical total counts per cell (the normalisation total for ``"gaussian"``).
        dispersion: NB inverse dispersion ``theta`` (``"gaussian"``: noise variance ``1/theta``).
        mixing_gain: gain of the mixing network's hidden layers (see **Mixing**).

    Returns:
        An AnnData with ``X`` CSR ``int32`` counts (dense ``float32`` for ``"gaussian"``), var names
        ``gene_0 ...``, categorical ``obs["covariate"]`` and ``obs["treatment"]``, the true blocks
        ``obsm["z_x"]``, ``obsm["z_t"]``, ``obsm["z_tx"]`` and their concatenation
        ``obsm["z_true"]`` in ``[x, t, tx]`` order (all ``float32``), and ``uns["simulation"]`` with
        ``kind``, ``seed``, ``dims``, ``likelihood``, the other settings, the level orders
        ``covariates`` and ``treatments`` (control first) and ``means`` / ``scales``: per block the
        arrays ``m_x, m_t, m_tx`` / ``s_x, s_t, s_tx`` above. It is storable with ``write_h5ad``.

    Raises:
        ConfigError: a size is not a positive integer, ``dims`` has an unknown key or a bad size,
            ``control_fraction`` is not in ``(0, 1)``, ``likelihood`` is unknown, ``library_size``,
            ``dispersion`` or ``mixing_gain`` is not positive, ``seed`` is not a non-negative integer, or ``n_cells``
            is too small to populate every condition. The message names the value.
    """
    _check_positive(n_cells=n_cells, n_genes=n_genes, n_covariates=n_covariates, n_treatments=n_treatments)
    block_dims = _block_dims(dims)
    numeric = isinstance(control_fraction, (int, float, np.integer, np.floating)) and not isinstance(
        control_fraction, bool
    )
    if not numeric or not 0 < control_fraction < 1:
        raise ConfigError(
            f"simulate: control_fraction={control_fraction!r} must be a number in (0, 1): every "
            "covariate needs controls and treated cells."
        )
    if not isinstance(likelihood, str) or likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"simulate: likelihood={likelihood!r} is not one of {listing(LIKELIHOODS)}."
            f"{did_you_mean(likelihood, LIKELIHOODS)}"
        )
    _check_positive_real(library_size=library_size, dispersion=dispersion, mixing_gain=mixing_gain)
    _check_seed(seed)

    streams = np.random.SeedSequence(int(seed)).spawn(3)
    rng_conditions, rng_mixing, rng_cells = (np.random.default_rng(stream) for stream in streams)
    n_t = n_treatments + 1  # the control is condition 0
    shapes = {"x": (n_covariates,), "t": (n_t,), "tx": (n_covariates, n_t)}
    means, scales = {}, {}
    for name in BLOCKS:
        means[name], scales[name] = _condition_params(rng_conditions, shapes[name] + (block_dims[name],))

    d = sum(block_dims.values())
    covariate, treatment = _balanced_labels(rng_cells, n_cells, n_covariates, n_treatments, control_fraction)
    blocks = _draw_blocks(covariate, treatment, rng_cells.standard_normal(size=(n_cells, d)), block_dims,
                          means, scales)

    # the reference latents centre the gene logits (see _mixing_network)
    ref_x = rng_mixing.integers(n_covariates, size=_N_REFERENCE)
    ref_t = rng_mixing.integers(n_t, size=_N_REFERENCE)
    ref_eps = rng_mixing.standard_normal(size=(_N_REFERENCE, d))
    reference = _draw_blocks(ref_x, ref_t, ref_eps, block_dims, means, scales)
    weights, biases = _mixing_network(rng_mixing, d, n_genes, _mixing_input(reference), mixing_gain)
    fractions = _softmax(_mlp(_mixing_input(blocks), weights, biases))
    library = _library_sizes(rng_cells, n_cells, library_size)
    values = _observe(rng_cells, fractions, library, likelihood, dispersion, library_size)

    covariates = [f"cov_{k}" for k in range(n_covariates)]
    treatments = ["control"] + [f"drug_{k}" for k in range(n_treatments)]
    obs = pd.DataFrame(
        {
            "covariate": pd.Categorical.from_codes(covariate, categories=covariates),
            "treatment": pd.Categorical.from_codes(treatment, categories=treatments),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    adata = AnnData(values if likelihood == "gaussian" else sp.csr_matrix(values), obs=obs, var=var)
    for name, block in blocks.items():
        adata.obsm[f"z_{name}"] = block.astype(np.float32)
    adata.obsm["z_true"] = np.concatenate([blocks[k] for k in BLOCKS], axis=1).astype(np.float32)
    adata.uns["simulation"] = {
        "kind": "interaction",
        "seed": int(seed),
        "dims": block_dims,
        "likelihood": likelihood,
        "control_fraction": float(control_fraction),
        "library_size": float(library_size),
        "dispersion": float(dispersion),
        "mixing_gain": float(mixing_gain),
        "covariates": np.array(covariates, dtype=object),
        "treatments": np.array(treatments, dtype=object),
        "means": means,
        "scales": scales,
    }
    return adata


def hard_interaction(seed: int = 0, **overrides: Any) -> AnnData:
    """A harder FCR world: :func:`interaction` with the settings of :data:`HARD_INTERACTION`.

    Five covariate levels (cell lines) and five drugs plus the control (30 conditions, 30 pairs
    ``m_tx[x, t]`` to tell apart), blocks of two dimensions each (six true dimensions), 6,000 cells,
    and a more non-linear mixing: both hidden leaky-ReLU layers have gain 2.5 instead of 1, so the
    logits spread 6.25 times wider, the softmax concentrates each cell's counts on fewer genes, and a
    linear function of ``z`` explains only about a quarter of the variance of a gene's noise-free
    log-expression (against 80-90% in the default world). About 70-80% of the counts are zeros,
    with library sizes around 50,000: most genes are off in most cells, and a cell's latents show
    in which few genes are on.

    Args:
        seed: non-negative integer seed (as in :func:`interaction`).
        overrides: any other :func:`interaction` argument, replacing the preset's value (e.g.
            ``n_cells=1000`` for a quick test of the same world: the condition parameters and the
            mixing network do not depend on ``n_cells``).
    """
    return interaction(seed=seed, **{**HARD_INTERACTION, **overrides})


def sparse_shift(
    n_cells: int = 5000,
    n_genes: int = 100,
    n_latent: int = 15,
    n_treatments: int = 20,
    *,
    seed: int = 0,
    max_targets: int = 3,
    shift_mean: float = 5.0,
    shift_sd: float = 0.5,
    n_hidden: int = 40,
    likelihood: str = "poisson",
    library_size: float = 1e6,
    dispersion: float = 5.0,
) -> AnnData:
    """The sVAE world (Lopez et al., CLeaR 2023): each treatment shifts a few latents; controls none.

    **Labels.** ``obs["treatment"]`` with levels ``control`` (code 0) and ``drug_0 .. drug_{T-1}``
    (``T = n_treatments``). The cells are dealt round-robin over the ``T + 1`` conditions, controls
    included, then shuffled: every condition has ``n_cells / (T + 1)`` cells, give or take one.

    **Targets and shifts.** Treatment ``a`` targets ``k_a ~ Uniform{1, ..., max_targets}`` distinct
    latent dimensions (at most ``n_latent``), drawn uniformly; on each target it shifts the latent
    by ``s · m`` with a random sign ``s = ±1`` and ``m ~ N(shift_mean, shift_sd^2)`` (sVAE: ±N(5, 0.5)).
    The ``(T, n_latent)`` 0/1 matrix of targets and the signed shifts (0 off target) are stored.

    **Latents.** Per cell ``z ~ N(shift[a], I)`` for treatment ``a``; controls ``z ~ N(0, I)``.

    **Mixing.** A leaky-ReLU (slope 0.2) MLP without biases, ``d -> h -> h -> h -> genes``
    (``h = n_hidden``, 40 in sVAE), each weight the (semi-)orthogonal polar factor of a Gaussian
    matrix scaled by the leaky-ReLU gain ``sqrt(2 / (1 + 0.2^2))`` (so every layer is injective when
    ``d <= h <= genes``); the logits are divided by their standard deviation over 4096 reference
    latents drawn like the cells' (sVAE divides by the standard deviation over the cells), and the
    gene fractions are ``p = softmax(logits)`` over genes.

    ``mixing_gain`` multiplies both hidden layers' weights (1 by default): with hidden biases kept
    ``N(0, 1)``, a larger gain moves the kinks towards the centre of the cloud and, leaky-ReLU being
    positively homogeneous, widens the logits about ``mixing_gain²``-fold, which makes the
    softmax, and so the map to gene fractions, more non-linear and the counts sparser
    (:func:`hard_interaction` uses 2.5).

    **Observations.** Library sizes ``l ~ LogNormal(log library_size, 0.3^2)`` per cell, then
    ``y_g ~ Poisson(l p_g)`` (``"poisson"``, sVAE's choice with ``library_size = 1e6``) or
    ``y_g ~ NB(mean = l p_g, theta = dispersion)`` (``"nb"``, sampled as gamma-Poisson).

    **Randomness.** ``seed`` seeds three independent streams: the targets and shifts, the mixing
    network, and the cells (labels, latents, libraries, noise); so the world does not depend on
    ``n_cells``.

    Args:
        n_cells: number of cells, at least ``n_treatments + 1``.
        n_genes: number of genes (at least ``n_hidden``).
        n_latent: latent dimension ``d`` (at most ``n_hidden``).
        n_treatments: treatments besides the control.
        seed: non-negative integer seed.
        max_targets: most latents a treatment shifts.
        shift_mean: mean size of a shift, ``N(shift_mean, shift_sd^2)`` with a random sign.
        shift_sd: standard deviation of the size of a shift.
        n_hidden: width of the mixing network's hidden layers.
        likelihood: ``"poisson"`` (default) or ``"nb"``.
        library_size: typical total counts per cell.
        dispersion: NB inverse dispersion ``theta`` (``"nb"`` only).

    Returns:
        An AnnData with CSR ``int32`` counts in ``X``, var names ``gene_0 ...``, categorical
        ``obs["treatment"]``, the true latent in ``obsm["z_true"]`` (``float32``) and
        ``uns["simulation"]`` with ``kind = "sparse_shift"``, ``seed``, the settings, ``treatments``
        (the drugs, in row order), ``targets`` (``(T, d)`` ``int8`` 0/1) and ``shifts`` (``(T, d)``,
        signed, 0 off target). It is storable with ``write_h5ad``.

    Raises:
        ConfigError: a size is not a positive integer, ``n_latent <= n_hidden <= n_genes`` does not
            hold, ``n_cells < n_treatments + 1``, ``likelihood`` is unknown, a shift, library size
            or dispersion is not positive, or ``seed`` is not a non-negative integer.
    """
    _check_positive(n_cells=n_cells, n_genes=n_genes, n_latent=n_latent, n_treatments=n_treatments,
                    max_targets=max_targets, n_hidden=n_hidden)
    if not n_latent <= n_hidden <= n_genes:
        raise ConfigError(f"simulate: need n_latent <= n_hidden <= n_genes for an injective mixing network, got "
                          f"n_latent={n_latent}, n_hidden={n_hidden}, n_genes={n_genes}.")
    if n_cells < n_treatments + 1:
        raise ConfigError(f"simulate: n_cells={n_cells} is too few for the control and {n_treatments} treatments "
                          "to have a cell each.")
    if not isinstance(likelihood, str) or likelihood not in ("poisson", "nb"):
        raise ConfigError(f"simulate: likelihood={likelihood!r} is not one of 'poisson', 'nb'."
                          f"{did_you_mean(str(likelihood), ('poisson', 'nb'))}")
    _check_positive_real(shift_mean=shift_mean, shift_sd=shift_sd, library_size=library_size, dispersion=dispersion)
    _check_seed(seed)

    rng_world, rng_mixing, rng_cells = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    targets = np.zeros((n_treatments, n_latent), dtype=np.int8)
    for a in range(n_treatments):
        k = rng_world.integers(1, min(max_targets, n_latent) + 1)
        targets[a, rng_world.choice(n_latent, size=k, replace=False)] = 1
    signs = rng_world.choice([-1.0, 1.0], size=targets.shape)
    shifts = targets * signs * rng_world.normal(shift_mean, shift_sd, size=targets.shape)
    means = np.vstack([np.zeros((1, n_latent)), shifts])  # condition 0 is the control

    gain = np.sqrt(2.0 / (1.0 + 0.2**2))  # the leaky-ReLU gain
    weights = _random_weights(rng_mixing, [n_latent, n_hidden, n_hidden, n_hidden, n_genes], gains=[gain] * 4,
                              orthogonal=True)
    reference = means[rng_mixing.integers(n_treatments + 1, size=_N_REFERENCE)]
    scale = _mlp(reference + rng_mixing.standard_normal(size=reference.shape), weights).std()

    condition = rng_cells.permutation(np.arange(n_cells) % (n_treatments + 1))
    z = means[condition] + rng_cells.standard_normal(size=(n_cells, n_latent))
    fractions = _softmax(_mlp(z, weights) / scale)
    library = _library_sizes(rng_cells, n_cells, library_size)
    counts = _observe(rng_cells, fractions, library, likelihood, dispersion, library_size)

    treatments = [f"drug_{a}" for a in range(n_treatments)]
    obs = pd.DataFrame(
        {"treatment": pd.Categorical.from_codes(condition, categories=["control"] + treatments)},
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    adata = AnnData(sp.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.uns["simulation"] = {
        "kind": "sparse_shift",
        "seed": int(seed),
        "n_latent": int(n_latent),
        "max_targets": int(max_targets),
        "shift_mean": float(shift_mean),
        "shift_sd": float(shift_sd),
        "n_hidden": int(n_hidden),
        "likelihood": likelihood,
        "library_size": float(library_size),
        "dispersion": float(dispersion),
        "treatments": np.array(treatments, dtype=object),
        "targets": targets,
        "shifts": shifts,
    }
    return adata


def _group_means(rng: np.random.Generator, n_groups: int, dim: int, distance: float) -> np.ndarray:
    """Means of ``n_groups`` groups in ``dim`` dimensions: ``distance / sqrt(2)`` times ``e_1, e_2, ..., -e_1,
    -e_2, ...`` (so the first ``2 * dim`` groups are each at least ``distance`` apart), randomly rotated;
    groups beyond ``2 * dim`` get random means of the same norm."""
    axes = np.vstack([np.eye(dim), -np.eye(dim)])[:n_groups]
    extra = rng.normal(size=(max(n_groups - 2 * dim, 0), dim))
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    return distance / np.sqrt(2.0) * np.vstack([axes, extra]) @ rotation


def contrastive(
    n_cells: int = 2000,
    n_genes: int = 100,
    *,
    n_shared: int = 4,
    n_salient: int = 2,
    n_cell_types: int = 3,
    n_subgroups: int = 2,
    target_fraction: float = 0.5,
    separation: float = 3.0,
    library_size: float = 2000.0,
    dispersion: float = 5.0,
    seed: int = 0,
) -> AnnData:
    """A contrastive world: background cells with shared structure only, target cells with salient structure too.

    **Shared structure.** Every cell has a cell type ``c`` (``obs["cell_type"]``, ``n_cell_types``
    levels, uniform) and a shared latent ``z_shared ~ N(mu_c, I)``; the means ``mu_c`` are ``separation``
    apart (``separation / sqrt(2)`` times distinct signed unit vectors, randomly rotated; beyond
    ``2 * n_shared`` levels, random vectors of that norm).

    **Salient structure.** A fraction ``target_fraction`` of the cells are targets
    (``obs["condition"] = "target"``, the others ``"background"``); a target cell belongs to a subgroup
    ``s`` (``obs["subgroup"]``, ``n_subgroups`` levels, uniform, independent of the cell type) and has
    ``z_salient ~ N(nu_s, I)`` with means ``nu_s`` placed alike; background cells have
    ``z_salient = 0`` (subgroup ``"none"``): the comparative model of contrastiveVI (Weinberger et al.,
    Nat Methods 2023) and Lopez et al. (CLeaR 2024).

    **Observations.** Gene fractions ``softmax(W2 leaky_relu(W1 [z_shared, z_salient]))`` (a random
    network with ``4 * (n_shared + n_salient)`` hidden units), library sizes log-normal around
    ``library_size``, ``y ~ NB(mean = library * fractions, theta = dispersion)``.

    Set it up with ``fcrkit.setup_anndata(adata, treatment_key="condition", control_value="background")``:
    the background cells are the controls.

    Args:
        n_cells: number of cells.
        n_genes: number of genes.
        n_shared: dimension of the shared latent.
        n_salient: dimension of the salient latent.
        n_cell_types: levels of the shared cluster label.
        n_subgroups: levels of the target cells' salient subgroup label.
        target_fraction: expected fraction of target cells, in ``(0, 1)``.
        separation: distance between the means of two cell types, or of two subgroups (in units of the
            within-group standard deviation).
        library_size: typical total counts per cell.
        dispersion: NB inverse dispersion.
        seed: seed of everything.

    Returns:
        An AnnData with CSR integer counts in ``X``, ``obs["condition"]``, ``obs["cell_type"]``,
        ``obs["subgroup"]``, and the true latents in ``obsm["z_shared"]`` and ``obsm["z_salient"]``.
    """
    _check_positive(n_cells=n_cells, n_genes=n_genes, n_shared=n_shared, n_salient=n_salient,
                    n_cell_types=n_cell_types, n_subgroups=n_subgroups)
    _check_positive_real(separation=separation, library_size=library_size, dispersion=dispersion)
    if not 0.0 < target_fraction < 1.0:
        raise ConfigError(f"simulate: target_fraction={target_fraction!r} must be in (0, 1): the model needs "
                          "background and target cells.")
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(n_cell_types, size=n_cells)
    target = rng.random(n_cells) < target_fraction
    subgroup = np.where(target, rng.integers(n_subgroups, size=n_cells), -1)

    type_means = _group_means(rng, n_cell_types, n_shared, separation)
    subgroup_means = _group_means(rng, n_subgroups, n_salient, separation)
    z_shared = type_means[cell_type] + rng.normal(size=(n_cells, n_shared))
    z_salient = np.zeros((n_cells, n_salient))
    z_salient[target] = subgroup_means[subgroup[target]] + rng.normal(size=(int(target.sum()), n_salient))

    adata = _nb_cells(rng, np.hstack([z_shared, z_salient]), n_genes, library_size, dispersion, {
        "condition": pd.Categorical(np.where(target, "target", "background"), categories=["background", "target"]),
        "cell_type": pd.Categorical([f"type_{k}" for k in cell_type]),
        "subgroup": pd.Categorical(np.where(target, [f"group_{s}" for s in subgroup], "none")),
    })
    adata.obsm["z_shared"] = z_shared.astype(np.float32)
    adata.obsm["z_salient"] = z_salient.astype(np.float32)
    adata.uns["simulation"] = {"kind": "contrastive", "seed": int(seed)}
    return adata


def feature_effects(
    n_treatments: int = 20,
    n_features: int = 6,
    n_covariates: int = 2,
    cells_per_condition: int = 50,
    n_genes: int = 100,
    n_latent: int = 6,
    *,
    effect_size: float = 2.5,
    library_size: float = 2000.0,
    dispersion: float = 5.0,
    seed: int = 0,
) -> AnnData:
    """A world whose treatment effects are a function of known treatment features (unseen perturbations).

    **Features.** Treatment ``p`` has features ``f_p ~ N(0, I)`` (``n_features`` of them), stored as
    ``adata.uns["treatment_features"]`` (a DataFrame, rows ``pert_0 ..``, columns ``feat_0 ..``) for
    ``fcrkit.setup_anndata(..., treatment_features=adata.uns["treatment_features"])``.

    **Latents.** ``z = μ[covariate] + s_p + N(0, I)`` with covariate means ``μ ~ N(0, 1.5²)`` and the
    treatment's shift ``s_p = effect_size · f_p B / sqrt(n_features)``, ``B ~ N(0, 1)`` (``n_features x
    n_latent``), the same map for every treatment: a model that learns it from the treatments in
    training knows the effect of any other treatment from its features. Controls have ``s = 0``.

    **Counts.** As :func:`basic`: gene fractions ``softmax(W2 leaky_relu(W1 z))``, library sizes
    log-normal around ``library_size``, ``NB(mean = library · fractions, theta = dispersion)``.

    **Cells.** ``cells_per_condition`` cells of each (covariate, treatment) pair and twice as many
    controls per covariate value; ``obs["covariate"]`` (``cov_0`` ..) and ``obs["treatment"]``
    (``control``, ``pert_0`` ..). The shifts are in ``uns["simulation"]["shifts"]``, the latents in
    ``obsm["z_true"]``.
    """
    _check_positive(n_treatments=n_treatments, n_features=n_features, n_covariates=n_covariates,
                    cells_per_condition=cells_per_condition, n_genes=n_genes, n_latent=n_latent)
    _check_positive_real(effect_size=effect_size, library_size=library_size, dispersion=dispersion)
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_treatments, n_features))
    shifts = effect_size * features @ rng.normal(size=(n_features, n_latent)) / np.sqrt(n_features)
    covariate_means = rng.normal(0.0, 1.5, size=(n_covariates, n_latent))
    weights = _random_weights(rng, [n_latent, 4 * n_latent, n_genes], gains=[1.0, 1.5])

    per_covariate = np.concatenate([np.full(2 * cells_per_condition, -1),
                                    np.repeat(np.arange(n_treatments), cells_per_condition)])
    treatment = np.tile(per_covariate, n_covariates)
    covariate = np.repeat(np.arange(n_covariates), len(per_covariate))
    z = covariate_means[covariate] + rng.normal(size=(len(treatment), n_latent))
    treated = treatment >= 0
    z[treated] += shifts[treatment[treated]]
    fractions = _softmax(_mlp(z, weights))
    counts = _observe(rng, fractions, _library_sizes(rng, len(z), library_size), "nb", dispersion, library_size)

    names = [f"pert_{p}" for p in range(n_treatments)]
    obs = pd.DataFrame(
        {"covariate": pd.Categorical([f"cov_{c}" for c in covariate]),
         "treatment": pd.Categorical(np.where(treated, np.array(names + ["control"])[treatment], "control"))},
        index=[f"cell_{i}" for i in range(len(z))],
    )
    adata = AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)]))
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.uns["treatment_features"] = pd.DataFrame(features, index=names,
                                                   columns=[f"feat_{k}" for k in range(n_features)])
    adata.uns["simulation"] = {"kind": "feature_effects", "seed": int(seed), "shifts": shifts}
    return adata


def sparse_additive(
    n_cells: int = 6000,
    n_genes: int = 100,
    n_latent: int = 8,
    n_perturbations: int = 8,
    n_doubles: int = 10,
    *,
    seed: int = 0,
    max_targets: int = 2,
    shift_mean: float = 2.0,
    shift_sd: float = 0.3,
    library_size: float = 5000.0,
    dispersion: float = 10.0,
    mixing_gain: float = 1.5,
) -> AnnData:
    """The SAMS-VAE world (Bereket & Karaletsos, NeurIPS 2023): sparse latent shifts that add up.

    **Perturbations.** ``P = n_perturbations`` single perturbations ``pert_0 .. pert_{P-1}`` and
    ``n_doubles`` distinct pairs of them, drawn uniformly among the ``P (P - 1) / 2`` pairs and
    written ``"pert_i+pert_j"`` (``i < j``). The conditions are the control, the singles and the
    doubles; the cells are dealt round-robin over them, then shuffled: every condition has about
    ``n_cells / (1 + P + n_doubles)`` cells.

    **Targets and shifts.** Perturbation ``p`` targets ``k_p ~ Uniform{1, ..., max_targets}``
    distinct latent dimensions, drawn uniformly; on each target it shifts the latent by ``s · m``
    with a random sign ``s = ±1`` and ``m ~ N(shift_mean, shift_sd^2)``. The ``(P, n_latent)`` 0/1
    target matrix and the signed shifts ``e_p`` (0 off target) are stored.

    **Latents.** Per cell ``z = z_basal + Σ_{p in the cell's condition} e_p`` with
    ``z_basal ~ N(0, I)``: a double moves the latent by exactly the sum of its singles' shifts.

    **Mixing.** ``z`` goes through :func:`interaction`'s random leaky-ReLU MLP (two hidden layers of
    width ``max(4 d, 16)``, orthogonal weights, hidden biases ``N(0, 1)``, gene baselines
    ``N(0, 1)``) with hidden gain ``mixing_gain``; the gene fractions are the softmax of its logits.
    So the latent shifts add up, but their effects on expression do not: the expression-additive
    answer (controls plus each single's change) misses a double's response.

    **Observations.** Library sizes ``l ~ LogNormal(log library_size, 0.3^2)`` per cell, then
    ``y_g ~ NB(mean = l p_g, theta = dispersion)``, sampled as gamma-Poisson.

    **Randomness.** ``seed`` seeds three independent streams: the perturbations (targets, shifts,
    doubles), the mixing network, and the cells (labels, latents, libraries, noise); so the world
    does not depend on ``n_cells``.

    Args:
        n_cells: number of cells, at least one per condition.
        n_genes: number of genes.
        n_latent: latent dimension ``d`` (at least ``max_targets``).
        n_perturbations: single perturbations (at least 2).
        n_doubles: double perturbations, at most ``P (P - 1) / 2`` (0: singles only).
        seed: non-negative integer seed.
        max_targets: most latents a perturbation shifts.
        shift_mean: mean size of a shift.
        shift_sd: standard deviation of the size of a shift.
        library_size: typical total counts per cell.
        dispersion: NB inverse dispersion ``theta``.
        mixing_gain: gain of the mixing network's hidden layers (larger: more non-linear).

    Returns:
        An AnnData with CSR ``int32`` counts in ``X``, var names ``gene_0 ...``, categorical
        ``obs["treatment"]`` (``control``, singles, doubles), the true latent in ``obsm["z_true"]``
        and the basal latent in ``obsm["z_basal"]`` (``float32``), and ``uns["simulation"]`` with
        ``kind = "sparse_additive"``, ``seed``, the settings, ``perturbations`` (row order),
        ``doubles``, ``targets`` (``(P, d)`` ``int8`` 0/1, the true target matrix) and ``shifts``
        (``(P, d)``, signed, 0 off target). Ready for ``fcrkit.setup_anndata(adata,
        treatment_key="treatment", control_value="control")``; storable with ``write_h5ad``.

    Raises:
        ConfigError: a size is not a positive integer, ``n_perturbations < 2``, ``n_doubles`` is
            negative or more than the pairs there are, ``max_targets > n_latent``, ``n_cells`` is
            too few for every condition to have a cell, a real setting is not positive, or ``seed``
            is not a non-negative integer.
    """
    _check_positive(n_cells=n_cells, n_genes=n_genes, n_latent=n_latent, n_perturbations=n_perturbations,
                    max_targets=max_targets)
    if n_perturbations < 2:
        raise ConfigError(f"simulate: n_perturbations={n_perturbations!r} must be at least 2 (doubles pair them).")
    n_pairs = n_perturbations * (n_perturbations - 1) // 2
    if isinstance(n_doubles, bool) or not isinstance(n_doubles, (int, np.integer)) or not 0 <= n_doubles <= n_pairs:
        raise ConfigError(f"simulate: n_doubles={n_doubles!r} must be an integer in [0, {n_pairs}] (the pairs of "
                          f"{n_perturbations} perturbations).")
    if max_targets > n_latent:
        raise ConfigError(f"simulate: max_targets={max_targets} is more than n_latent={n_latent}.")
    n_conditions = 1 + n_perturbations + int(n_doubles)
    if n_cells < n_conditions:
        raise ConfigError(f"simulate: n_cells={n_cells} is too few for {n_conditions} conditions (control, "
                          f"{n_perturbations} singles, {n_doubles} doubles) to have a cell each.")
    _check_positive_real(shift_mean=shift_mean, shift_sd=shift_sd, library_size=library_size, dispersion=dispersion,
                         mixing_gain=mixing_gain)
    _check_seed(seed)

    rng_world, rng_mixing, rng_cells = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    targets = np.zeros((n_perturbations, n_latent), dtype=np.int8)
    for p in range(n_perturbations):
        targets[p, rng_world.choice(n_latent, size=rng_world.integers(1, max_targets + 1), replace=False)] = 1
    signs = rng_world.choice([-1.0, 1.0], size=targets.shape)
    shifts = targets * signs * rng_world.normal(shift_mean, shift_sd, size=targets.shape)
    pairs = np.array([(i, j) for i in range(n_perturbations) for j in range(i + 1, n_perturbations)], dtype=int)
    doubles = pairs[np.sort(rng_world.choice(len(pairs), size=int(n_doubles), replace=False))]
    # condition -> 0/1 row over perturbations: control, singles, doubles
    design = np.zeros((n_conditions, n_perturbations))
    design[1 + np.arange(n_perturbations), np.arange(n_perturbations)] = 1.0
    for row, (i, j) in enumerate(doubles, start=1 + n_perturbations):
        design[row, [i, j]] = 1.0
    means = design @ shifts

    reference = means[rng_mixing.integers(n_conditions, size=_N_REFERENCE)]
    reference = reference + rng_mixing.standard_normal(size=reference.shape)
    weights, biases = _mixing_network(rng_mixing, n_latent, n_genes, reference, mixing_gain)

    condition = rng_cells.permutation(np.arange(n_cells) % n_conditions)
    z_basal = rng_cells.standard_normal(size=(n_cells, n_latent))
    z = z_basal + means[condition]
    fractions = _softmax(_mlp(z, weights, biases))
    library = _library_sizes(rng_cells, n_cells, library_size)
    counts = _observe(rng_cells, fractions, library, "nb", dispersion, library_size)

    perturbations = [f"pert_{p}" for p in range(n_perturbations)]
    double_names = [f"{perturbations[i]}+{perturbations[j]}" for i, j in doubles]
    labels = ["control", *perturbations, *double_names]
    obs = pd.DataFrame({"treatment": pd.Categorical.from_codes(condition, categories=labels)},
                       index=[f"cell_{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    adata = AnnData(sp.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["z_true"] = z.astype(np.float32)
    adata.obsm["z_basal"] = z_basal.astype(np.float32)
    adata.uns["simulation"] = {
        "kind": "sparse_additive",
        "seed": int(seed),
        "n_latent": int(n_latent),
        "max_targets": int(max_targets),
        "shift_mean": float(shift_mean),
        "shift_sd": float(shift_sd),
        "library_size": float(library_size),
        "dispersion": float(dispersion),
        "mixing_gain": float(mixing_gain),
        "perturbations": np.array(perturbations, dtype=object),
        "doubles": np.array(double_names, dtype=object),
        "targets": targets,
        "shifts": shifts,
    }
    return adata
