"""The contract between fcrkit and its components.

A component is made by a *factory* (a class or a function) registered under a name of one of seven
kinds. fcrkit calls the factory with the positional arguments below plus the options from the model
spec as keyword arguments, and uses the object it returns only through the methods below.

Labels
    A batch of observed labels is a mapping from a *condition* name to a float tensor with one row
    per cell: ``"x"`` the covariates (one-hot per covariate column, concatenated) and ``"t"`` the
    treatment (dose-weighted multi-hot over the treatment vocabulary; controls are all zeros).
    A component only sees the conditions its spec entry lists; ``label_dims`` gives their widths.

============  ========================================================  =============================
kind          factory call                                              object
============  ========================================================  =============================
encoder       ``f(n_input, n_output, label_dims, **options)``           ``nn.Module``;
                                                                        ``enc(y, labels) -> (loc, scale)``
prior         ``f(dim, label_dims, **options)``                          ``nn.Module``;
                                                                        ``.distribution(labels, n)``
decoder       ``f(n_input, n_output, heads, label_dims, **options)``     ``nn.Module``;
                                                                        ``dec(z, labels) -> {head: tensor}``
likelihood    ``f(n_genes, **options)``                                  ``nn.Module`` with ``input_kind``,
                                                                        ``heads``, ``.distribution``, ``.mean``
regularizer   ``f(info, **options)``                                     ``.loss(ctx)`` and/or ``.handler(w)``
posterior     ``f(dim, **options)``                                      ``nn.Module`` with ``moments``,
                                                                        ``.distribution(loc, scale)``,
                                                                        ``.point``, ``.read_moments``
combiner      ``f(block_dims, label_dims, **options)``                   ``nn.Module`` with ``n_output``;
                                                                        ``comb(z, labels) -> tensor``
============  ========================================================  =============================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from pyro.distributions import Distribution
from torch import Tensor, nn

from fcrkit.errors import ConfigError

LabelDims = Mapping[str, int]
Labels = Mapping[str, Tensor]
InputKind = Literal["counts", "real"]

KINDS: tuple[str, ...] = ("encoder", "prior", "decoder", "likelihood", "regularizer", "posterior", "combiner")


@runtime_checkable
class Encoder(Protocol):
    """Amortised posterior of one latent block: ``q(z | y, labels) = Normal(loc, scale)``.

    ``y`` is the encoder input (``log1p`` counts, or the real-valued matrix), shape ``(B, n_input)``;
    it returns ``loc`` and a strictly positive ``scale``, each ``(B, n_output)``.
    """

    def __call__(self, y: Tensor, labels: Labels) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class Prior(Protocol):
    """Prior of one latent block, possibly conditioned on observed labels.

    ``distribution(labels, n)`` returns a Pyro distribution with batch shape ``(n,)`` and event shape
    ``(dim,)``. Return a diagonal ``Normal(...).to_event(1)`` to get the analytic KL of
    ``TraceMeanField_ELBO``.

    Optionally ``link(priors)``: called once, after every block's prior is built, with all of them by
    block name, for a prior that reuses parts of another block's prior (e.g. its label embedding);
    the parts stay registered with, and saved by, the prior that built them.

    A prior may also be a small Pyro program: an optional ``sample(name, labels, n)`` method that
    samples the block's site ``name`` itself (inside the cells plate) and returns its value, with
    sites of its own before it, e.g. a discrete component marked
    ``infer={"enumerate": "parallel"}`` that ``elbo="trace_enum"`` sums out (see
    :class:`fcrkit.components.mixture.GaussianMixturePrior`). ``distribution`` must then be the same
    prior with those sites marginalised (``predict`` and regularisers that compare with the prior use it).
    """

    def distribution(self, labels: Labels, n: int) -> Distribution:
        """The prior of ``n`` cells with ``labels``: batch shape ``(n,)``, event shape ``(dim,)``."""
        ...


@runtime_checkable
class Posterior(Protocol):
    """Variational family of one latent block: turns the encoder's ``(loc, scale)`` into ``q(z | y)``.

    Attributes:
        moments: which of ``"loc"`` and ``"scale"`` the block exposes to regularisers
            (:class:`Context`); a regulariser that reads one the family lacks is refused by name.
    """

    moments: tuple[str, ...]

    def distribution(self, loc: Tensor, scale: Tensor) -> Distribution:
        """``q(z | y)`` for encoder outputs ``(B, dim)``: batch shape ``(B,)``, event shape ``(dim,)``."""
        ...

    def point(self, loc: Tensor, scale: Tensor) -> Tensor:
        """One representative value per cell ``(B, dim)`` (the mean where it is known in closed form):
        what ``get_latent_representation`` and ``predict`` use."""
        ...

    def read_moments(self, fn: Distribution) -> dict[str, Tensor]:
        """The ``moments`` of a distribution made by :meth:`distribution` (as it sits in a guide trace)."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Maps the concatenated latent blocks ``(B, n_input)`` to one ``(B, n_output)`` tensor per head.

    ``heads`` (given to the factory) are the raw parameters the likelihood asked for, e.g.
    ``("mean",)`` for NB or ``("mean", "gate")`` for ZINB.
    """

    def __call__(self, z: Tensor, labels: Labels) -> dict[str, Tensor]: ...


@runtime_checkable
class Combiner(Protocol):
    """How the latent blocks reach the decoder: ``comb(z, labels) -> (B, n_output)``.

    ``z`` maps each block's name to its value ``(B, dim)`` (with particles, extra leading dimensions);
    ``n_output`` is the width of the tensor it returns (the decoder's input width).
    """

    n_output: int

    def __call__(self, z: Mapping[str, Tensor], labels: Labels) -> Tensor: ...


@runtime_checkable
class Likelihood(Protocol):
    """Observation model ``p(y | decoder output, library size)`` over genes.

    Attributes:
        input_kind: ``"counts"`` (non-negative integers) or ``"real"`` values; fcrkit refuses data
            of the other kind before training.
        heads: names of the per-cell, per-gene decoder outputs it needs.
        encoder_input: optional; what encoders see of the data when the spec says ``"auto"``
            (``"log1p"``, ``"lognorm"`` or ``"identity"``; see :class:`fcrkit.spec.ModelSpec`).
    """

    input_kind: InputKind
    heads: tuple[str, ...]

    def distribution(self, params: Mapping[str, Tensor], library: Tensor) -> Distribution:
        """Batch shape ``(B,)``, event shape ``(n_genes,)``. ``library`` is ``(B, 1)`` total counts."""
        ...

    def mean(self, params: Mapping[str, Tensor], library: Tensor) -> Tensor:
        """Expected value of ``y``, shape ``(B, n_genes)``, on the scale of the data."""
        ...


@dataclass(frozen=True)
class ModelInfo:
    """What a regulariser factory is told about the model it joins.

    Attributes:
        block_dims: the latent blocks and their sizes.
        label_dims: the width of each label (``"x"``, ``"t"``).
        n_genes: the number of genes.
        label_groups: for a label that is one-hot per column (the covariates ``"x"``, one column per
            covariate key), the width of each column in order, e.g. ``{"x": (4, 2)}`` for a cell line
            with 4 levels and a replicate with 2; a label not listed (the multi-hot treatment ``"t"``)
            has no such structure.
    """

    block_dims: Mapping[str, int]
    label_dims: Mapping[str, int]
    n_genes: int
    label_groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


class BlockMoments(dict):
    """``ctx.loc`` or ``ctx.scale``: a tensor per block; a block whose posterior family lacks it raises.

    A plain dict of the blocks that have the moment, plus ``lacking``: block name -> posterior family
    of the blocks that do not; reading one of those is a :class:`~fcrkit.errors.ConfigError` that
    names the block, its family and the fix.
    """

    def __init__(self, values: Mapping[str, Tensor], moment: str, lacking: Mapping[str, str] | None = None):
        super().__init__(values)
        self.moment = moment
        self.lacking = dict(lacking or {})

    def __missing__(self, block: str) -> Tensor:
        if block in self.lacking:
            raise ConfigError(
                f"a regularizer reads the posterior {self.moment} of block {block!r}, but its posterior family "
                f"{self.lacking[block]!r} has no {self.moment}: use posterior 'normal' (or 'flow') for block "
                f"{block!r}, or drop that regularizer."
            )
        raise KeyError(block)

    def map(self, f: Any) -> BlockMoments:
        """``f`` applied to every tensor, keeping what is lacking."""
        return BlockMoments({k: f(v) for k, v in self.items()}, self.moment, self.lacking)


@dataclass
class Context:
    """What a regulariser sees of one minibatch.

    Attributes:
        z: posterior sample per block, ``(B, dim)``.
        loc, scale: posterior parameters per block, as the block's posterior family exposes them
            (:attr:`Posterior.moments`): exact for ``normal``, the base Normal's (the encoder's
            output) for ``flow``, ``loc`` only for ``delta``. Reading one a family lacks raises a
            ConfigError naming the block (see :class:`BlockMoments`).
        labels: every condition of the batch (``"x"``, ``"t"``), whatever the regulariser's spec.
        index: row numbers of the cells in the training data.
        n_obs: the plate size: the number of training cells, twice that with control pairing.
        epoch: current epoch (0-based); ``progress`` is the fraction of training done.
        module: the generic model, for regularisers that need to run its parts.
        pairs: with control pairing, the batch holds ``pairs`` cells followed by their ``pairs``
            paired controls (row ``i + pairs`` is the control of row ``i``); 0 without pairing.
        y, library: the batch's observed values ``(B, n_genes)`` and library sizes ``(B, 1)`` (for
            terms that compare generated with observed cells); None where no data are at hand.
    """

    z: dict[str, Tensor]
    loc: dict[str, Tensor]
    scale: dict[str, Tensor]
    labels: Labels
    index: Tensor
    n_obs: int
    epoch: int = 0
    progress: float = 0.0
    module: nn.Module | None = field(default=None, repr=False)
    pairs: int = 0
    y: Tensor | None = field(default=None, repr=False)
    library: Tensor | None = field(default=None, repr=False)

    def unpaired(self) -> Context:
        """The context of the minibatch's own cells, without the paired controls appended to them.

        A paired batch holds each cell twice over in effect: its own row and, for a control, the
        rows where it was drawn as a partner. A term that should count each cell once (a classifier,
        a discriminator, an independence penalty) reads this; the ELBO counts both branches. Without
        pairing it is the context itself.
        """
        if not self.pairs:
            return self
        n = self.pairs

        def head(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v[:n] for k, v in d.items()}

        return replace(self, z=head(self.z), loc=head(self.loc), scale=head(self.scale), labels=head(self.labels),
                       index=self.index[:n], n_obs=self.n_obs // 2, pairs=0,
                       y=None if self.y is None else self.y[:n],
                       library=None if self.library is None else self.library[:n])

    def detached(self) -> Context:
        """A copy whose latents carry no gradient (what adversaries train on)."""

        def cut(d: dict[str, Tensor]) -> dict[str, Tensor]:
            if isinstance(d, BlockMoments):
                return d.map(Tensor.detach)
            return {k: v.detach() for k, v in d.items()}

        return replace(self, z=cut(self.z), loc=cut(self.loc), scale=cut(self.scale))


@runtime_checkable
class Regularizer(Protocol):
    """An extra term of the objective, an effect on the ELBO, or both.

    A regulariser implements at least one of:

    - ``loss(ctx) -> Tensor``: a scalar (a per-cell mean) added to the loss times its weight;
    - ``handler(weight) -> pyro Messenger``: an effect applied while the ELBO is computed (the KL
      regulariser scales the latent sites with it).

    It may also own an adversary: an ``adversary`` attribute (an ``nn.Module``, kept out of the model's
    parameters), ``adversary_loss(ctx)`` computed on detached latents, ``adversary_steps`` (steps per
    model step, default 1) and ``adversary_lr``. The trainer gives the adversary its own optimiser.

    A regulariser that compares cells of a minibatch with each other (a kernel, a permutation)
    sets ``global_batch = True``: under data-parallel training its ``loss`` and ``adversary_loss``
    then see every process's cells of the global batch (gathered latents; gradients reach each
    process's own cells; see :mod:`fcrkit.train.strategy`). In one process nothing changes.
    """


def has_method(obj: Any, name: str) -> bool:
    """Whether ``obj`` has a callable attribute ``name``."""
    return callable(getattr(obj, name, None))


def regularizer_problems(obj: Any) -> list[str]:
    """What keeps ``obj`` from being a valid regulariser (empty when it is one)."""
    problems = []
    if not (has_method(obj, "loss") or has_method(obj, "handler")):
        problems.append("it has neither a loss(ctx) nor a handler(weight) method")
    adversary = getattr(obj, "adversary", None)
    if adversary is not None:
        if not isinstance(adversary, nn.Module):
            problems.append("its 'adversary' is not a torch.nn.Module")
        if not has_method(obj, "adversary_loss"):
            problems.append("it has an adversary but no adversary_loss(ctx) method")
    return problems


def instance_problems(kind: str, obj: Any) -> list[str]:
    """What keeps a built component from honouring the protocol of ``kind``."""
    if kind == "regularizer":
        return regularizer_problems(obj)
    problems = []
    if not isinstance(obj, nn.Module):
        problems.append(f"it returned a {type(obj).__name__}, not a torch.nn.Module")
    if kind == "prior" and not has_method(obj, "distribution"):
        problems.append("it has no distribution(labels, n) method")
    if kind == "combiner" and not (isinstance(getattr(obj, "n_output", None), int) and obj.n_output > 0):
        problems.append("its n_output is not a positive int (the decoder's input width)")
    if kind == "posterior":
        for method in ("distribution", "point", "read_moments"):
            if not has_method(obj, method):
                problems.append(f"it has no {method}() method")
        moments = getattr(obj, "moments", None)
        if not (isinstance(moments, tuple) and set(moments) <= {"loc", "scale"}):
            problems.append("its moments is not a tuple of 'loc' and/or 'scale'")
    if kind == "likelihood":
        for method in ("distribution", "mean"):
            if not has_method(obj, method):
                problems.append(f"it has no {method}(params, library) method")
        if getattr(obj, "input_kind", None) not in ("counts", "real"):
            problems.append("its input_kind is not 'counts' or 'real'")
        heads = getattr(obj, "heads", None)
        if not (isinstance(heads, Sequence) and heads and all(isinstance(h, str) for h in heads)):
            problems.append("its heads is not a non-empty tuple of names")
    return problems


#: Positional arguments fcrkit passes to each kind's factory (checked at registration).
FACTORY_ARGS: dict[str, tuple[str, ...]] = {
    "encoder": ("n_input", "n_output", "label_dims"),
    "prior": ("dim", "label_dims"),
    "decoder": ("n_input", "n_output", "heads", "label_dims"),
    "likelihood": ("n_genes",),
    "regularizer": ("info",),
    "posterior": ("dim",),
    "combiner": ("block_dims", "label_dims"),
}

#: Methods a factory that is a class must define (checked at registration).
CLASS_METHODS: dict[str, tuple[str, ...]] = {
    "encoder": ("forward",),
    "prior": ("distribution",),
    "decoder": ("forward",),
    "likelihood": ("distribution", "mean"),
    "regularizer": (),
    "posterior": ("distribution", "point", "read_moments"),
    "combiner": ("forward",),
}

