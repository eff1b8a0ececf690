"""Helpers for testing components and plugins, fcrkit's own and third parties' alike.

- :func:`check_component` builds a component the way fcrkit does and exercises its protocol on
  random inputs (shapes, finiteness, gradients, adversaries); it raises :class:`ConformanceError`
  listing every problem, so a plugin author's test is one line::

      from fcrkit.testing import check_component
      def test_my_penalty_conforms():
          check_component("regularizer", MyPenalty, {"block": "t"})

- :func:`tiny_adata` gives a small registered data set (seconds to train on) for tests that train.
- The pytest fixtures ``fcrkit_registry`` and ``fcrkit_plugin`` live in
  :mod:`fcrkit.testing.pytest_plugin`; enable them with ``pytest_plugins = ["fcrkit.testing.pytest_plugin"]``
  in a ``conftest.py``.

This module does not import pytest: the conformance check works in any test runner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from anndata import AnnData
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from fcrkit.errors import PluginError
from fcrkit.protocols import KINDS, Context, ModelInfo, ModelParts
from fcrkit.registry import Registry, get_registry

if TYPE_CHECKING:
    from fcrkit.program import GenerativeModel

__all__ = ["ConformanceError", "check_component", "random_context", "random_labels", "tiny_adata"]

#: Sizes of the random inputs the conformance check uses.
N_CELLS, N_GENES, N_INPUT = 16, 12, 12
N_FEATURES = 5  # of each treatment, for a treatment encoder
LABEL_DIMS: dict[str, int] = {"x": 3, "t": 2}
BLOCK_DIMS: dict[str, int] = {"x": 3, "t": 2, "tx": 2}


class ConformanceError(AssertionError):
    """A component does not honour its protocol; the message lists every problem found."""


def random_labels(label_dims: Mapping[str, int], n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Labels as fcrkit passes them: ``x`` one-hot, ``t`` multi-hot with about half the cells controls."""
    labels = {}
    for name, dim in label_dims.items():
        if name == "t":
            labels[name] = (torch.rand(n, dim, generator=generator) < 0.5).float()
        else:
            labels[name] = nn.functional.one_hot(torch.randint(dim, (n,), generator=generator), dim).float()
    return labels


def random_context(info: ModelInfo, n: int = N_CELLS, *, pairs: int = 0, seed: int = 0,
                   parts: ModelParts | None = None) -> Context:
    """A minibatch :class:`~fcrkit.protocols.Context` with random latents that require gradients.

    Its observed values ``y`` are Poisson(3) counts, ``library`` their row sums. ``parts`` are the model
    parts its ``prior``, ``decode`` and ``encode`` run (e.g. ``model.module``; None: none, and those raise).

    With ``pairs > 0`` the first ``pairs`` cells are followed by their ``pairs`` "controls" (labels
    with ``t = 0`` and the same ``x``), as control pairing lays out a batch.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = random_labels(info.label_dims, n, generator)
    if pairs:
        for name, value in labels.items():
            value[pairs:2 * pairs] = 0.0 if name == "t" else value[:pairs]
    loc = {b: torch.randn(n, d, generator=generator).requires_grad_() for b, d in info.block_dims.items()}
    scale = {b: (0.5 + torch.rand(n, d, generator=generator)).requires_grad_() for b, d in info.block_dims.items()}
    z = {b: loc[b] + scale[b] * torch.randn(n, d, generator=generator) for b, d in info.block_dims.items()}
    y = torch.poisson(torch.full((n, info.n_genes), 3.0), generator=generator)
    # global blocks: a row per treatment; their loc in (0, 1), as a mask's probabilities
    rows = info.label_dims.get("t", 2)
    global_loc = {b: torch.rand(rows, d, generator=generator).requires_grad_() for b, d in info.global_dims.items()}
    found = {b: (torch.rand(p.shape, generator=generator) < p.detach()).float() for b, p in global_loc.items()}
    return Context(z=z, loc=loc, scale=scale, labels=labels, index=torch.arange(n), n_obs=10 * n, pairs=pairs,
                   y=y, library=y.sum(-1, keepdim=True), parts=parts, globals=found, global_loc=global_loc)


def check_component(
    kind: str,
    component: str | Callable[..., Any],
    options: Mapping[str, Any] | None = None,
    *,
    block_dims: Mapping[str, int] | None = None,
    label_dims: Mapping[str, int] | None = None,
    prior: str | Mapping[str, Any] | None = None,
    global_dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> Any:
    """Build ``component`` (a registered name or a factory) as fcrkit would and exercise its protocol.

    Checks the registration contract (the factory's arguments, the methods of a class), that the
    built object honours its kind's protocol, and what it returns on random inputs: shapes, finite
    values, positive scales, gradients reaching the inputs and parameters, and for a regulariser
    with an adversary, that the adversary learns on detached latents only. A regulariser's context
    carries a small model (``ctx.parts``, run through ``ctx.prior``, ``ctx.decode`` and ``ctx.encode``)
    whose blocks have conditional Gaussian priors, or ``prior``.

    Args:
        kind: ``"encoder"``, ``"prior"``, ``"decoder"``, ``"likelihood"``, ``"regularizer"``,
            ``"posterior"``, ``"combiner"`` or ``"treatment_encoder"`` (built over random features
            of the ``"t"`` label's treatments).
        component: a registered name, or the factory a plugin registers.
        options: the spec options to build it with.
        block_dims: the blocks of the model a regulariser joins; by default ``x, t, tx``.
        label_dims: the labels of the model a regulariser (or a conditioned part) joins; by default
            ``x`` (3 levels) and ``t`` (2 treatments).
        prior: for a regulariser that runs the model's priors (``ctx.prior``): the prior of every
            block of the small model it is given, as a spec entry (``{"name": "sparse_shift",
            "conditions": ["t"]}``); default: conditional Gaussians on every label.
        global_dims: the global blocks of the model a regulariser joins (``ctx.globals`` and
            ``ctx.global_loc`` then hold random ``(treatments, dim)`` values); by default none.
        seed: seed of the random inputs.

    Returns:
        The built component, for further checks of your own.

    Raises:
        ConformanceError: listing every problem found.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}.")
    label_dims = dict(LABEL_DIMS if label_dims is None else label_dims)
    block_dims = dict(BLOCK_DIMS if block_dims is None else block_dims)
    registry = _registry_with(kind, component)
    name = component if isinstance(component, str) else "under_test"
    args = {
        "encoder": (N_INPUT, 4, label_dims),
        "prior": (4, label_dims),
        "decoder": (4, N_GENES, ("mean", "gate"), label_dims),
        "likelihood": (N_GENES,),
        "regularizer": (ModelInfo(block_dims, label_dims, N_GENES, global_dims=dict(global_dims or {})),),
        "posterior": (4,),
        "combiner": (block_dims, label_dims),
        "treatment_encoder": (torch.randn(label_dims.get("t", 2), N_FEATURES,
                                          generator=torch.Generator().manual_seed(seed)),),
    }[kind]
    try:
        obj = registry.build(kind, name, *args, **dict(options or {}))
    except PluginError as err:
        raise ConformanceError(f"{kind} {name!r}: {err}") from None
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    labels = random_labels(label_dims, N_CELLS, generator)
    checked = (*args, prior) if kind == "regularizer" else args  # the regulariser's small model gets `prior`
    problems = _CHECKS[kind](obj, labels, checked, generator)
    if problems:
        raise ConformanceError(f"{kind} {name!r} does not conform:\n- " + "\n- ".join(problems))
    return obj


def _registry_with(kind: str, component: str | Callable[..., Any]) -> Registry:
    if isinstance(component, str):
        return get_registry()
    registry = Registry()
    with registry._registering_as("the component under test", ""):
        try:
            getattr(registry, kind)("under_test", component)
        except PluginError as err:
            raise ConformanceError(str(err)) from None
    return registry


# -- per-kind checks: each returns the problems it found ------------------------------------------------
def _shape_problems(what: str, value: Any, shape: tuple[int, ...]) -> list[str]:
    if not isinstance(value, Tensor):
        return [f"{what} is a {type(value).__name__}, not a torch.Tensor"]
    problems = []
    if tuple(value.shape) != shape:
        problems.append(f"{what} has shape {tuple(value.shape)}, expected {shape}")
    if not torch.isfinite(value).all():
        problems.append(f"{what} has NaN or infinite values")
    return problems


def _gradient_problems(what: str, output: Tensor, inputs: Mapping[str, Tensor], module: nn.Module | None) -> list[str]:
    """The gradient of ``output`` must be finite and reach the module's parameters (if any)."""
    if not output.requires_grad:
        return [f"{what} does not depend on anything trainable (no gradient can flow through it)"]
    params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    leaves = [t for t in inputs.values() if t.requires_grad]
    grads = torch.autograd.grad(output, leaves + params, allow_unused=True)
    problems = [f"{what}: the gradient is not finite" for g in grads if g is not None and not torch.isfinite(g).all()]
    if params and all(g is None or not g.any() for g in grads[len(leaves):]):
        problems.append(f"{what}: no gradient reaches the component's parameters")
    return list(dict.fromkeys(problems))  # one line per distinct problem


def _check_encoder(enc: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    n_input, n_output = args[0], args[1]
    y = torch.rand(N_CELLS, n_input, generator=generator).requires_grad_()
    out = enc(y, labels)
    if not (isinstance(out, tuple) and len(out) == 2):
        return [f"enc(y, labels) returned {type(out).__name__}, expected a (loc, scale) tuple"]
    loc, scale = out
    problems = _shape_problems("loc", loc, (N_CELLS, n_output)) + _shape_problems("scale", scale, (N_CELLS, n_output))
    if isinstance(scale, Tensor) and not (scale > 0).all():
        problems.append("scale has entries <= 0 (it must be strictly positive)")
    if not problems:
        problems += _gradient_problems("loc + scale", (loc + scale).sum(), {"y": y}, enc)
    return problems


def _check_prior(prior: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    dim = args[0]
    dist = prior.distribution(labels, N_CELLS)
    problems = []
    if tuple(dist.batch_shape) != (N_CELLS,) or tuple(dist.event_shape) != (dim,):
        problems.append(f"distribution(labels, n) has batch shape {tuple(dist.batch_shape)} and event shape "
                        f"{tuple(dist.event_shape)}, expected ({N_CELLS},) and ({dim},) (use .to_event(1))")
        return problems
    z = dist.sample()
    problems += _shape_problems("a sample", z, (N_CELLS, dim))
    problems += _shape_problems("log_prob", dist.log_prob(z), (N_CELLS,))
    if not problems and any(True for _ in prior.parameters()):
        problems += _gradient_problems("log_prob", dist.log_prob(z).sum(), {}, prior)
    return problems


def _check_decoder(dec: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    n_input, n_output, heads = args[0], args[1], args[2]
    z = torch.randn(N_CELLS, n_input, generator=generator).requires_grad_()
    out = dec(z, labels)
    if not isinstance(out, Mapping) or set(out) != set(heads):
        got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        return [f"dec(z, labels) returned {got}, expected a dict with the heads {list(heads)}"]
    problems = [p for h in heads for p in _shape_problems(f"head {h!r}", out[h], (N_CELLS, n_output))]
    if not problems:
        problems += _gradient_problems("the heads", sum(v.sum() for v in out.values()), {"z": z}, dec)
    return problems


def _check_likelihood(lik: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    n_genes = args[0]
    params = {h: torch.randn(N_CELLS, n_genes, generator=generator).requires_grad_() for h in lik.heads}
    library = torch.full((N_CELLS, 1), 1000.0)
    dist = lik.distribution(params, library)
    if tuple(dist.batch_shape) != (N_CELLS,) or tuple(dist.event_shape) != (n_genes,):
        return [(f"distribution(params, library) has batch shape {tuple(dist.batch_shape)} and event shape "
                 f"{tuple(dist.event_shape)}, expected ({N_CELLS},) and ({n_genes},)")]
    if lik.input_kind == "counts":
        y = torch.poisson(torch.full((N_CELLS, n_genes), 3.0), generator=generator)
    else:
        y = torch.randn(N_CELLS, n_genes, generator=generator)
    log_prob = dist.log_prob(y)
    problems = _shape_problems("log_prob of data", log_prob, (N_CELLS,))
    problems += _shape_problems("mean(params, library)", lik.mean(params, library), (N_CELLS, n_genes))
    if not problems:
        problems += _gradient_problems("log_prob", log_prob.sum(), params, lik)
    return problems


def _check_posterior(family: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    dim = args[0]
    loc = torch.randn(N_CELLS, dim, generator=generator).requires_grad_()
    scale = (torch.rand(N_CELLS, dim, generator=generator) + 0.5).requires_grad_()
    q = family.distribution(loc, scale)
    if tuple(q.batch_shape) != (N_CELLS,) or tuple(q.event_shape) != (dim,):
        return [f"distribution(loc, scale) has batch shape {tuple(q.batch_shape)} and event shape "
                f"{tuple(q.event_shape)}, expected ({N_CELLS},) and ({dim},) (use .to_event(1))"]
    if not q.has_rsample:
        return ["distribution(loc, scale) cannot rsample (gradients must flow through its draws)"]
    z = q.rsample()
    problems = _shape_problems("a sample", z, (N_CELLS, dim))
    problems += _shape_problems("log_prob", q.log_prob(z), (N_CELLS,))
    problems += _shape_problems("point(loc, scale)", family.point(loc, scale), (N_CELLS, dim))
    exposed = family.read_moments(q)
    if set(exposed) != set(family.moments):
        problems.append(f"read_moments returned {sorted(exposed)}, but moments says {list(family.moments)}")
    problems += [p for m, t in exposed.items() for p in _shape_problems(f"moment {m!r}", t, (N_CELLS, dim))]
    if not problems:
        problems += _gradient_problems("a sample", z.sum(), {"loc": loc, "scale": scale}, family)
    return problems


def _check_combiner(comb: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    block_dims = args[0]
    z = {b: torch.randn(N_CELLS, d, generator=generator).requires_grad_() for b, d in block_dims.items()}
    out = comb(z, labels)
    problems = _shape_problems("comb(z, labels)", out, (N_CELLS, comb.n_output))
    if not problems:
        problems += _gradient_problems("comb(z, labels)", out.sum(), z, comb)
    return problems


def _check_treatment_encoder(enc: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    n_treatments = args[0].shape[0]
    table = enc.table()
    problems = _shape_problems("table()", table, (n_treatments, enc.width))
    if "t" not in labels:
        return problems
    out = enc(labels)
    problems += _shape_problems("enc(labels)", out, (N_CELLS, enc.width))
    if problems:
        return problems
    # each cell's embedding is the dose-weighted sum of its treatments' rows of the table (0 for controls)
    if not torch.allclose(out, labels["t"] @ table, atol=1e-5):
        problems.append("enc(labels) is not each cell's dose-weighted sum of its treatments' rows of table()")
    has_parameters = any(p.requires_grad for p in enc.parameters())  # none: a fixed map of the features
    return problems + (_gradient_problems("enc(labels)", out.sum(), {}, enc) if has_parameters else [])


def _check_regularizer(reg: Any, labels: dict, args: tuple, generator: torch.Generator) -> list[str]:
    info = args[0]
    problems = []
    if callable(getattr(reg, "handler", None)) and not isinstance(reg.handler(1.0), Messenger):
        problems.append("handler(weight) does not return a pyro Messenger (an effect handler)")
    if not callable(getattr(reg, "loss", None)):
        return problems
    pairs = N_CELLS // 2 if getattr(reg, "needs_control_pairing", False) else 0
    ctx = random_context(info, pairs=pairs, seed=int(torch.randint(2**31, (1,), generator=generator)))
    # for regularisers that run the model's parts (its priors, say)
    ctx.parts = _module_for(info, args[1])
    loss = reg.loss(ctx)
    problems += _shape_problems("loss(ctx)", loss, ())
    if problems:
        return problems
    latents = {f"{part}[{b}]": t for part in ("loc", "scale") for b, t in getattr(ctx, part).items()}
    own = reg if isinstance(reg, nn.Module) else None
    if own is not None and getattr(reg, "adversary", None) is not None:
        own = None  # the adversary's parameters are not the model's: they are checked below
    problems += _gradient_problems("loss(ctx)", loss, latents, own)
    adversary = getattr(reg, "adversary", None)
    if adversary is not None:
        detached = ctx.detached()
        adversary_loss = reg.adversary_loss(detached)
        problems += _shape_problems("adversary_loss(ctx)", adversary_loss, ())
        if not problems:
            problems += _gradient_problems("adversary_loss(ctx)", adversary_loss, {}, adversary)
    return problems


def _module_for(info: ModelInfo, prior_entry: Any = None) -> GenerativeModel:
    """A small generic model with ``info``'s blocks, each with a prior conditioned on every label (or
    the prior ``prior_entry``, a spec entry)."""
    from fcrkit.program import GenerativeModel
    from fcrkit.spec import BlockSpec, ComponentSpec, ModelSpec

    conditioned = ComponentSpec("conditional_gaussian", tuple(info.label_dims))
    prior = conditioned if info.label_dims else ComponentSpec("standard_normal")
    if prior_entry is not None:
        prior = ComponentSpec.parse(prior_entry, "prior")
    blocks = tuple(BlockSpec(b, d, prior=prior) for b, d in info.block_dims.items())
    spec = ModelSpec(name="conformance", blocks=blocks, likelihood=ComponentSpec("nb"))
    return GenerativeModel(spec, dict(info.label_dims), info.n_genes)


_CHECKS: dict[str, Callable[[Any, dict, tuple, torch.Generator], list[str]]] = {
    "encoder": _check_encoder,
    "prior": _check_prior,
    "decoder": _check_decoder,
    "likelihood": _check_likelihood,
    "regularizer": _check_regularizer,
    "posterior": _check_posterior,
    "combiner": _check_combiner,
    "treatment_encoder": _check_treatment_encoder,
}


def tiny_adata(n_cells: int = 300, n_genes: int = 30, *, seed: int = 0) -> AnnData:
    """A small simulated data set, registered (``cell_type`` covariate, ``treatment``), that trains in seconds.

    Built by :func:`fcrkit.simulate.basic`; every (cell type, treatment) combination has controls, so
    FCR's control pairing works.
    """
    from fcrkit.data.anndata import setup_anndata
    from fcrkit.data.simulate import basic

    adata = basic(n_cells=n_cells, n_genes=n_genes, n_latent=4, n_cell_types=3, n_treatments=2, seed=seed)
    setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    return adata
