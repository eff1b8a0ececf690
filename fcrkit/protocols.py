"""The contract between fcrkit and its components.

A component is made by a *factory* (a class or a function) registered under a name of one of eight
kinds. fcrkit calls the factory with the positional arguments below plus the options from the model
spec as keyword arguments, and uses the object it returns only through the methods below.

Labels
    A batch of observed labels is a mapping from a *condition* name to a float tensor with one row
    per cell: ``"x"`` the covariates (one-hot per covariate column, concatenated) and ``"t"`` the
    treatment (dose-weighted multi-hot over the treatment vocabulary; controls are all zeros).
    A component only sees the conditions its spec entry lists; ``label_dims`` gives their widths.
    A condition may also name a *global* block (``plate = "t"`` or ``"x"``): its value is then a
    ``(vocabulary, dim)`` tensor, one row per treatment or covariate level (not one per cell), and
    ``label_dims`` gives its ``dim``. A global block drawn per treatment entry (``draws =
    "per_entry"``) reaches the cells' components, while training, as a
    :class:`fcrkit.data.labels.EntryDraws` (one row per treatment entry of the minibatch) instead: a
    component that can read it says so with the class attribute ``reads_entry_draws = True`` and
    takes the rows with :func:`fcrkit.data.labels.entry_rows`; fcrkit refuses the others by name.

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
regularizer   ``f(info, **options)``                                     :class:`LossTerm` (``.loss(ctx)``) and/or
                                                                        :class:`ElboEffect` (``.handler(w)``),
                                                                        optionally :class:`Adversarial`
posterior     ``f(dim, **options)``                                      ``nn.Module`` with ``moments``,
                                                                        ``.distribution(loc, scale)``,
                                                                        ``.point``, ``.read_moments``
combiner      ``f(block_dims, label_dims, **options)``                   ``nn.Module`` with ``n_output``;
                                                                        ``comb(z, labels) -> tensor``
treatment_    ``f(features, **options)``                                 ``nn.Module`` with ``width``,
encoder                                                                 ``.table()``, ``enc(labels)``
============  ========================================================  =============================

Treatment features
    When ``fcrkit.setup_anndata(..., treatment_features=table)`` gave the treatments features, an
    encoder, prior, decoder or combiner that conditions on ``"t"`` and whose factory takes the keyword
    argument ``treatment_features`` receives the ``(treatments, features)`` matrix there (rows in
    vocabulary order); it typically builds a registered ``treatment_encoder`` from it
    (:func:`fcrkit.components.treatments.build_treatment_encoder`), so that a treatment no training
    cell received still has an embedding, and keeps it as its attribute ``treatment_encoder`` (None
    where it keeps a free embedding per treatment): a model one of whose parts has one can predict
    for treatments it never saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from pyro.distributions import Distribution
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from fcrkit.errors import ConfigError

LabelDims = Mapping[str, int]
Labels = Mapping[str, Tensor]
InputKind = Literal["counts", "real"]

KINDS: tuple[str, ...] = ("encoder", "prior", "decoder", "likelihood", "regularizer", "posterior", "combiner",
                          "treatment_encoder")
#: The keyword argument through which a component's factory receives the treatments' feature matrix.
TREATMENT_FEATURES = "treatment_features"


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
        init_loc, init_scale: optional floats; where a *global* block's own ``(loc, scale)`` rows
            start (default 0 and 0.1; a relaxed Bernoulli's logits start at its ``init_logit``).
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

    ``z`` maps each block's name to its value ``(B, dim)`` (with particles, extra leading dimensions),
    and each global block's name to its ``(vocabulary, dim)`` value; the factory's ``block_dims`` are
    the per-cell blocks (a combiner that reads a global block lists it among its conditions, so that
    ``label_dims`` gives its width). ``n_output`` is the width of the tensor it returns (the
    decoder's input width).
    """

    n_output: int

    def __call__(self, z: Mapping[str, Tensor], labels: Labels) -> Tensor: ...


@runtime_checkable
class TreatmentEncoder(Protocol):
    """A treatment's embedding computed from its features: ``e_p = h(F_p)``.

    Built as ``f(features, **options)`` from the ``(treatments, n_features)`` matrix. ``width`` is the
    embedding's size; ``table()`` gives every treatment's embedding, ``(treatments, width)``;
    ``enc(labels)`` each cell's dose-weighted sum over its treatment entries, ``(cells, width)``
    (0 for controls), from :func:`fcrkit.data.labels.treatment_entries`, never a
    ``cells x treatments x width`` tensor.
    """

    width: int

    def table(self) -> Tensor:
        """Every treatment's embedding, ``(treatments, width)``."""
        ...

    def __call__(self, labels: Labels) -> Tensor: ...


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
        block_dims: the per-cell latent blocks and their sizes (what ``ctx.z`` holds).
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
    #: the global blocks (one row per vocabulary entry) and their sizes (what ``ctx.globals`` holds)
    global_dims: Mapping[str, int] = field(default_factory=dict)


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


@runtime_checkable
class ModelParts(Protocol):
    """What a regulariser may run of the model it joins: the methods :class:`Context` calls for it.

    The generic model (:class:`fcrkit.program.GenerativeModel`) provides them; a regulariser never
    reaches into the model for anything else. Each works on any labels and values, not only the
    minibatch's (e.g. a counterfactual treatment).

    Attributes:
        input_kind: what the likelihood models, ``"counts"`` or ``"real"``.
    """

    input_kind: InputKind

    def prior_distribution(self, block: str, labels: Labels, n: int) -> Distribution:
        """The prior of ``block`` for ``n`` cells with ``labels``: batch shape ``(n, dim)`` (no ``to_event``)."""
        ...

    def decode_mean(self, z: Mapping[str, Tensor], labels: Labels, library: Tensor) -> Tensor:
        """Expected values ``(B, n_genes)`` (on the data's scale) of cells with block values ``z``."""
        ...

    def encode_values(self, values: Tensor, labels: Labels) -> dict[str, tuple[Tensor, Tensor]]:
        """Each block's encoder output ``(loc, scale)`` for cells with ``values`` ``(B, n_genes)`` and ``labels``."""
        ...

    def frozen_statistics(self) -> AbstractContextManager[None]:
        """A ``with`` block in which batch norms use the batch's statistics but do not update their running
        ones (for values the model generated itself, which must not shift what prediction uses)."""
        ...


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
        pairs: with control pairing, the batch holds ``pairs`` cells followed by their ``pairs``
            paired controls (row ``i + pairs`` is the control of row ``i``); 0 without pairing.
        y, library: the batch's observed values ``(B, n_genes)`` and library sizes ``(B, 1)`` (for
            terms that compare generated with observed cells); None where no data are at hand.
        parts: the model's parts a regulariser may run (:class:`ModelParts`), through :meth:`prior`,
            :meth:`decode`, :meth:`encode` and :meth:`frozen_statistics`; None where no model is at
            hand (then those methods raise a ConfigError).
        globals: the value of each global block at this step, ``(vocabulary, dim)`` (read off the
            guide's trace; a block fixed by ``fix_global`` gives its fixed value).
        global_loc: for each global block that is a site, what its posterior family exposes as
            ``loc`` (a Normal's means, a relaxed Bernoulli mask's probabilities), ``(vocabulary, dim)``.
    """

    z: dict[str, Tensor]
    loc: dict[str, Tensor]
    scale: dict[str, Tensor]
    labels: Labels
    index: Tensor
    n_obs: int
    epoch: int = 0
    progress: float = 0.0
    pairs: int = 0
    y: Tensor | None = field(default=None, repr=False)
    library: Tensor | None = field(default=None, repr=False)
    parts: ModelParts | None = field(default=None, repr=False)
    globals: dict[str, Tensor] = field(default_factory=dict)
    global_loc: dict[str, Tensor] = field(default_factory=dict)

    def _parts(self, what: str) -> ModelParts:
        if self.parts is None:
            raise ConfigError(f"a regularizer calls ctx.{what}, which runs the model's parts, but this context has "
                              "none: build it with parts= (the model's Context has them; "
                              "fcrkit.testing.check_component gives its regularizers a small model).")
        return self.parts

    @property
    def input_kind(self) -> InputKind:
        """What the model's likelihood models: ``"counts"`` or ``"real"``."""
        return self._parts("input_kind").input_kind

    def prior(self, block: str, labels: Labels | None = None, n: int | None = None) -> Distribution:
        """The prior of ``block`` for ``n`` cells with ``labels`` (default: this minibatch's cells and labels),
        batch shape ``(n, dim)``: a regulariser that compares posteriors with priors reads it."""
        labels = self.labels if labels is None else labels
        return self._parts("prior()").prior_distribution(block, labels, len(self.index) if n is None else n)

    def decode(self, z: Mapping[str, Tensor], labels: Labels | None = None, library: Tensor | None = None) -> Tensor:
        """Expected values ``(B, n_genes)`` of cells with block values ``z``, ``labels`` and ``library``
        (default: this minibatch's labels and library sizes)."""
        labels = self.labels if labels is None else labels
        library = self.library if library is None else library
        if library is None:
            raise ConfigError("ctx.decode(): this context holds no library sizes; pass library=.")
        return self._parts("decode()").decode_mean(z, labels, library)

    def encode(self, y: Tensor, labels: Labels | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Each block's posterior ``(loc, scale)`` for values ``y`` ``(B, n_genes)`` with ``labels`` (default:
        this minibatch's)."""
        return self._parts("encode()").encode_values(y, self.labels if labels is None else labels)

    def frozen_statistics(self) -> AbstractContextManager[None]:
        """A ``with`` block in which running the model's parts leaves its batch-norm statistics alone (see
        :meth:`ModelParts.frozen_statistics`); a no-op without parts."""
        return nullcontext() if self.parts is None else self.parts.frozen_statistics()

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

        return replace(self, z=cut(self.z), loc=cut(self.loc), scale=cut(self.scale), globals=cut(self.globals),
                       global_loc=cut(self.global_loc))


@runtime_checkable
class LossTerm(Protocol):
    """A regulariser that adds a term to the objective.

    Optional attributes the trainer reads: ``needs_control_pairing`` (True: the model spec must pair
    each cell with a control, see :attr:`Context.pairs`).

    A regulariser that compares cells of a minibatch with each other (a kernel, a permutation)
    sets ``global_batch = True``: under data-parallel training its ``loss`` and ``adversary_loss``
    then see every process's cells of the global batch (gathered latents; gradients reach each
    process's own cells; see :mod:`fcrkit.train.strategy`). In one process nothing changes.
    """

    def loss(self, ctx: Context) -> Tensor:
        """A scalar (a per-cell mean) added to the loss times the spec's weight."""
        ...


@runtime_checkable
class ElboEffect(Protocol):
    """A regulariser that acts on the ELBO itself, e.g. the ``kl`` regulariser scaling the latent sites."""

    def handler(self, weight: float) -> Messenger:
        """A Pyro effect handler applied while the ELBO is computed, at the spec's weight for this epoch."""
        ...


@runtime_checkable
class Adversarial(Protocol):
    """A regulariser that owns an adversary, trained by its own optimiser on detached latents.

    Attributes:
        adversary: the adversary's ``nn.Module`` (kept out of the model's parameters).

    Optional attributes the trainer reads: ``adversary_steps`` (its steps per model step, default 1),
    ``adversary_lr`` (its Adam learning rate, default 1e-3) and ``alternate_every`` (k > 0: only the
    adversary learns, in every k-th epoch).
    """

    adversary: nn.Module

    def adversary_loss(self, ctx: Context) -> Tensor:
        """The adversary's scalar loss on a :meth:`Context.detached` context."""
        ...


#: A regulariser: a :class:`LossTerm`, an :class:`ElboEffect`, or both; it may also be
#: :class:`Adversarial`. ``isinstance(obj, Regularizer)`` tells whether ``obj`` is one of the first two;
#: :func:`regularizer_problems` says what is wrong with one that is not.
Regularizer: TypeAlias = LossTerm | ElboEffect


def has_method(obj: Any, name: str) -> bool:
    """Whether ``obj`` has a callable attribute ``name``."""
    return callable(getattr(obj, name, None))


def regularizer_problems(obj: Any) -> list[str]:
    """What keeps ``obj`` from being a valid regulariser (empty when it is one)."""
    problems = []
    if not isinstance(obj, Regularizer) or not (has_method(obj, "loss") or has_method(obj, "handler")):
        problems.append("it has neither a loss(ctx) nor a handler(weight) method (a LossTerm or an ElboEffect)")
    adversary = getattr(obj, "adversary", None)
    if adversary is not None:
        if not isinstance(adversary, nn.Module):
            problems.append("its 'adversary' is not a torch.nn.Module")
        if not has_method(obj, "adversary_loss"):
            problems.append("it has an adversary but no adversary_loss(ctx) method (see Adversarial)")
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
    if kind == "treatment_encoder":
        if not (isinstance(getattr(obj, "width", None), int) and obj.width > 0):
            problems.append("its width is not a positive int (the embedding's size)")
        if not has_method(obj, "table"):
            problems.append("it has no table() method")
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
    "treatment_encoder": ("features",),
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
    "treatment_encoder": ("forward", "table"),
}

