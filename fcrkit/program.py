"""The generic Pyro model and guide, written once and built from a :class:`~fcrkit.spec.ModelSpec`.

Model, for the cells of a minibatch (one ``pyro.plate("cells", N, subsample=index)``)::

    z_b ~ prior_b(labels)            for each block b (a site named b, event dim = block dim)
    y   ~ likelihood(decoder(combiner({z_b}, labels), labels), library)   (site "y", event dim = genes)

The combiner concatenates the blocks unless the spec names another (see
:mod:`fcrkit.components.combiners`).

Guide::

    z_b ~ posterior_b(encoder_b(input(y), labels))    (a diagonal Normal unless the block names a family)

A prior may itself be a small Pyro program (a ``sample(name, labels, n)`` method, e.g. a mixture
whose component is a discrete site summed out by ``TraceEnum_ELBO``); otherwise its
``distribution`` is sampled at the block's site.

Global blocks (``plate = "t"`` or ``"x"``, see :class:`~fcrkit.spec.BlockSpec`) come first, each
in a plate over its label's vocabulary, outside the cells plate (so Pyro does not rescale them by
the minibatch's subsampling: they count once per step, as in the whole-data ELBO)::

    g ~ prior_g(labels, earlier global blocks)          (V rows, one per vocabulary entry)
    g ~ posterior_g(loc_g, scale_g)                     (guide: parameters of the model, V x dim each)

A component that lists a global block's name among its conditions finds its ``(V, dim)`` value in
``labels[name]``; the combiner finds every block, global ones included, in its ``z``.

**Per-entry draws** (``draws = "per_entry"``, a block over ``"t"``). While training, the cells' terms
of such a block see, instead of its one ``(V, dim)`` site value, an independent reparameterised draw
of ``q(g_t)`` for each (cell, treatment) entry of the minibatch
(:class:`~fcrkit.data.labels.EntryDraws`, ``(entries, dim)``: memory ``O(entries × dim)``); the
site itself, with its prior and posterior terms, is unchanged. This is the local reparameterisation
trick (Kingma, Salimans & Welling 2015) applied to a global latent, and it estimates the same ELBO:
the cells' part is ``E_q(g)[Σ_i f_i(g)] = Σ_i E_q(g)[f_i(g)]``, each cell's term ``f_i`` depends on
``g`` only through the rows of its own treatments, and the guide's rows are independent of one
another (each global family draws a row from that row's own ``(loc, scale)``), so a fresh draw of
those rows per cell has the same distribution as the rows of the shared draw: each term, hence the
sum, keeps its expectation. Only the correlation between cells' terms goes (one shared draw moves
every cell of a treatment together), which is what lowers the variance of the minibatch's gradient.
Outside training (``module.eval()``: validation, ``likelihood_bounds``, which conditions the site on
its posterior point) and for a fixed block, the cells see the site's (or fixed) value.

Components are looked up in the registry by name; each sees only the labels its spec lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.poutine import Trace
from torch import Tensor, nn

from fcrkit.components.nn import frozen_norm_statistics, lognormalize
from fcrkit.data.labels import EntryDraws, select_labels, treatment_entries, with_values
from fcrkit.data.loaders import Batch
from fcrkit.errors import ConfigError, listing
from fcrkit.protocols import TREATMENT_FEATURES, BlockMoments, Context, InputKind, Labels, ModelInfo
from fcrkit.registry import Registry, get_registry
from fcrkit.spec import ComponentSpec, ModelSpec

#: The name of each global plate (``BlockSpec.plate``) in the Pyro program.
PLATE_NAMES: dict[str, str] = {"t": "treatments", "x": "covariates"}
_LABEL_ARGUMENT = {"x": "covariate_keys", "t": "treatment_key"}


class GlobalParameters(nn.Module):
    """The variational parameters of one global block: a ``(loc, scale)`` row per vocabulary entry.

    ``loc`` starts at ``init_loc`` and ``scale`` at ``init_scale`` (kept positive by a softplus).
    A block can be *fixed* at a value (:meth:`GenerativeModel.fix_global`): it is then no site of
    the model or the guide, only a constant; the fixed value and the flag are buffers, saved with
    the weights.
    """

    def __init__(self, rows: int, dim: int, init_loc: float = 0.0, init_scale: float = 0.1):
        super().__init__()
        self.loc = nn.Parameter(torch.full((rows, dim), float(init_loc)))
        raw = torch.tensor(float(init_scale)).expm1().log()  # softplus^-1
        self.raw_scale = nn.Parameter(torch.full((rows, dim), float(raw)))
        self.register_buffer("fixed_value", torch.zeros(rows, dim))
        self.register_buffer("is_fixed", torch.zeros((), dtype=torch.bool))

    @property
    def scale(self) -> Tensor:
        """The positive scale parameters, ``(rows, dim)``."""
        return F.softplus(self.raw_scale) + 1e-6


class GenerativeModel(nn.Module):
    """The model and guide of a spec, with its components as sub-modules.

    Args:
        spec: what the model is made of.
        label_dims: widths of the labels the data provides (``AnnDataSetup.label_dims``).
        n_genes: number of genes.
        registry: where component names are looked up (default: the global registry).
        label_groups: the one-hot columns of each label (``AnnDataSetup.label_groups``), told to the
            regularisers (:class:`~fcrkit.protocols.ModelInfo`).
        treatment_features: the treatments' features aligned with the vocabulary
            (``AnnDataSetup.feature_matrix()``); passed as ``treatment_features=`` to every component that
            conditions on ``t`` and whose factory takes that keyword (see :mod:`fcrkit.components.treatments`).
    """

    def __init__(self, spec: ModelSpec, label_dims: Mapping[str, int], n_genes: int, registry: Registry | None = None,
                 label_groups: Mapping[str, Sequence[int]] | None = None,
                 treatment_features: np.ndarray | None = None):
        super().__init__()
        registry = registry or get_registry()
        self.treatment_features = None if treatment_features is None else torch.as_tensor(
            np.asarray(treatment_features, dtype=np.float32))
        self.uses_treatment_features = False  # set when a component embeds the treatment from its features
        self.spec = spec
        self.n_genes = int(n_genes)
        self.label_dims = dict(label_dims)
        self._conditions: dict[str, tuple[str, ...]] = {}

        lik = spec.likelihood
        if lik.conditions:
            raise ConfigError(f"likelihood {lik.name!r} cannot condition on labels; remove its conditions.")
        self.likelihood = registry.build("likelihood", lik.name, self.n_genes, **lik.options)
        self.priors = nn.ModuleDict()
        self.encoders = nn.ModuleDict()
        self.posteriors = nn.ModuleDict()
        self.globals = nn.ModuleDict()
        self.global_plates: dict[str, str] = {}
        self.entry_blocks = tuple(b.name for b in spec.blocks if b.draws == "per_entry")
        n_latent = sum(spec.cell_block_dims.values())
        for block in spec.blocks:
            if block.is_global and block.plate not in self.label_dims:
                raise ConfigError(
                    f"block {block.name!r} is global over label {block.plate!r} (plate={block.plate!r}), but the data "
                    f"has no such labels: pass {_LABEL_ARGUMENT[block.plate]} to fcrkit.setup_anndata."
                )
            self.priors[block.name] = self._build(registry, "prior", block.prior, f"{block.name}.prior", block.dim)
            self.posteriors[block.name] = registry.build("posterior", block.posterior.name, block.dim,
                                                         **block.posterior.options)
            if block.is_global:
                family = self.posteriors[block.name]
                self.global_plates[block.name] = block.plate
                self.globals[block.name] = GlobalParameters(
                    self.label_dims[block.plate], block.dim, getattr(family, "init_loc", 0.0),
                    getattr(family, "init_scale", 0.1))
            elif spec.joint_encoder is None:
                self.encoders[block.name] = self._build(
                    registry, "encoder", block.encoder, f"{block.name}.encoder", self.n_genes, block.dim
                )
        for prior in self.priors.values():  # a prior may use parts of other blocks' priors (Prior.link)
            if callable(getattr(prior, "link", None)):
                prior.link(dict(self.priors))
        if spec.joint_encoder is not None:  # one encoder, its output split into the blocks
            self.encoders["joint"] = self._build(
                registry, "encoder", spec.joint_encoder, "joint.encoder", self.n_genes, n_latent
            )
        # the combiner is built for the per-cell blocks; it reads global ones from z (and, to learn their
        # widths, from its conditions)
        self.combiner = self._build(registry, "combiner", spec.combiner, "combiner", spec.cell_block_dims)
        self.decoder = self._build(
            registry, "decoder", spec.decoder, "decoder", self.combiner.n_output, self.n_genes,
            tuple(self.likelihood.heads)
        )
        groups = {k: tuple(int(w) for w in v) for k, v in (label_groups or {}).items()}
        info = ModelInfo(spec.cell_block_dims, self.label_dims, self.n_genes, groups, spec.global_block_dims)
        self.regularizers: dict[str, object] = {r.key: registry.build("regularizer", r.name, info, **r.options)
                                                for r in spec.regularizers}
        needs_pairs = [k for k, r in self.regularizers.items() if getattr(r, "needs_control_pairing", False)]
        if needs_pairs and spec.control_pairing == "none":
            raise ConfigError(f"regularizer(s) {listing(needs_pairs)} compare cells with paired controls: "
                              "set control_pairing = 'covariates' (or 'any') in the model spec.")
        # regularisers that hold parameters (adversaries included) are saved with the model
        self.regularizer_modules = nn.ModuleDict(
            {name: r for name, r in self.regularizers.items() if isinstance(r, nn.Module)}
        )
        transform = spec.encoder_input
        if transform == "auto":
            transform = getattr(self.likelihood, "encoder_input", None) or (
                "log1p" if self.likelihood.input_kind == "counts" else "identity")
        self.encoder_input = transform

    def _build(self, registry: Registry, kind: str, comp: ComponentSpec, key: str, *args: object) -> nn.Module:
        # a global block a component reads has the width of its rows (its dim)
        widths = {**self.label_dims, **self.spec.global_block_dims}
        missing = [c for c in comp.conditions if c not in widths]
        if missing:
            raise ConfigError(
                f"{kind} {comp.name!r} ({key}) conditions on {listing(missing)}, but the data has no such "
                f"labels: pass {' and '.join(_LABEL_ARGUMENT[m] for m in missing)} to fcrkit.setup_anndata."
            )
        self._conditions[key] = comp.conditions
        dims = {c: widths[c] for c in comp.conditions}
        options = dict(comp.options)
        if (self.treatment_features is not None and "t" in comp.conditions and TREATMENT_FEATURES not in options
                and registry.takes_option(kind, comp.name, TREATMENT_FEATURES)):
            options[TREATMENT_FEATURES] = self.treatment_features
        built = registry.build(kind, comp.name, *args, dims, **options)
        per_entry = [c for c in comp.conditions if c in self.entry_blocks]
        if per_entry and key.split(".")[0] not in self.spec.global_block_dims and \
                not getattr(built, "reads_entry_draws", False):
            # the cells' components get the block's per-entry draws, which only entry_rows() reads
            raise ConfigError(f"{kind} {comp.name!r} ({key}) reads global block(s) {listing(per_entry)}, drawn per "
                              f"treatment entry (draws = 'per_entry'), but does not read per-entry draws: give "
                              f"the block(s) draws = 'site'.")
        self.uses_treatment_features |= getattr(built, "treatment_encoder", None) is not None
        return built

    def labels_for(self, key: str, labels: Labels) -> Labels:
        """The labels component ``key`` (e.g. ``"z.encoder"``) sees.

        A global block it reads that ``labels`` lacks (outside the model and guide: ``predict``,
        ``decode_mean``) is its posterior point (:meth:`global_points`).
        """
        conditions = self._conditions[key]
        lacking = {c: self.global_point(c) for c in conditions if c not in labels}
        return select_labels(with_values(labels, lacking) if lacking else labels, conditions)

    def inputs(self, y: Tensor) -> Tensor:
        """What the encoders see of the data."""
        if self.encoder_input == "lognorm":
            return lognormalize(y)
        return torch.log1p(y) if self.encoder_input == "log1p" else y

    # -- Pyro programs ------------------------------------------------------------------------------
    def model(self, batch: Batch, n_obs: int) -> None:
        """p(y, z | labels) for the cells of ``batch``; ``n_obs`` is the plate size (training cells)."""
        n = batch.y.shape[0]
        labels, plates = batch.labels, {}
        for name in self.globals:  # in spec order: a global prior may read earlier global blocks
            value = self._global_site(name, plates, lambda name=name, labels=labels: self._sample_prior(
                name, self.priors[name], labels, self.globals[name].loc.shape[0]))
            labels = with_values(labels, {name: value})
        entry_draws = self._entry_draws(labels)
        if entry_draws:
            labels = with_values(labels, entry_draws)
        with pyro.plate("cells", n_obs, subsample=batch.index):
            z = {name: self._sample_prior(name, self.priors[name], labels, n) for name in self.spec.cell_block_dims}
            z.update({name: labels[name] for name in self.globals})
            params = self.decoder(self.combiner(z, self.labels_for("combiner", labels)),
                                  self.labels_for("decoder", labels))
            pyro.sample("y", self.likelihood.distribution(params, batch.library), obs=batch.y)

    def _entry_draws(self, labels: Labels) -> dict[str, EntryDraws]:
        """While training, a draw of ``q`` per treatment entry of the minibatch for each global block with
        ``draws = "per_entry"`` that is a site (see the module docstring for why the ELBO is unchanged)."""
        names = [name for name in self.entry_blocks if not self.globals[name].is_fixed] if self.training else []
        if not names:
            return {}
        _, rows, _ = treatment_entries(labels)
        draws = {}
        for name in names:
            params = self.globals[name]
            values = self.posteriors[name].distribution(params.loc[rows], params.scale[rows]).rsample()
            draws[name] = EntryDraws(rows, values)
        return draws

    def _global_site(self, name: str, plates: dict[str, pyro.plate], sample: Callable[[], Tensor]) -> Tensor:
        """Global block ``name``'s value: ``sample()`` in its plate, or its fixed value (no site).

        ``plates`` holds the plates this run of the program has made: blocks over the same label share
        one (a plate is a site of its own, made once per run).
        """
        params = self.globals[name]
        if params.is_fixed:
            return params.fixed_value
        label = self.global_plates[name]
        if label not in plates:
            plates[label] = pyro.plate(PLATE_NAMES[label], params.loc.shape[0])
        with plates[label]:
            return sample()

    def _sample_prior(self, name: str, prior: nn.Module, labels: Labels, n: int) -> Tensor:
        """Block ``name``'s site: the prior's own program if it has one, else a draw of its distribution."""
        labels = self.labels_for(f"{name}.prior", labels)
        if callable(getattr(prior, "sample", None)):
            return prior.sample(name, labels, n)
        return pyro.sample(name, prior.distribution(labels, n))

    def guide(self, batch: Batch, n_obs: int) -> None:
        """q(z | y, labels) for the cells of ``batch``, after q of the global blocks."""
        plates: dict[str, pyro.plate] = {}
        drawn = {}  # encoders that read a global block see the guide's draw of it (SAMS-VAE's correlated guide)
        for name, params in self.globals.items():
            family = self.posteriors[name]
            drawn[name] = self._global_site(name, plates, lambda name=name, p=params, f=family: pyro.sample(
                name, f.distribution(p.loc, p.scale)))
        posterior = self.encode(batch, drawn)
        with pyro.plate("cells", n_obs, subsample=batch.index):
            for name, (loc, scale) in posterior.items():
                pyro.sample(name, self.posteriors[name].distribution(loc, scale))

    @property
    def enumerated_blocks(self) -> list[str]:
        """Blocks whose prior is a program with discrete sites to enumerate (they need ``TraceEnum_ELBO``)."""
        return [name for name, prior in self.priors.items() if callable(getattr(prior, "sample", None))]

    # -- deterministic use of the parts ---------------------------------------------------------------
    def encode(self, batch: Batch, drawn: Mapping[str, Tensor] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Posterior ``(loc, scale)`` of each block for the cells of ``batch``; an encoder that reads a global
        block sees its value in ``drawn`` (the guide's draws), else its point."""
        return self.encode_values(batch.y, with_values(batch.labels, drawn) if drawn else batch.labels)

    def encode_values(self, values: Tensor, labels: Labels) -> dict[str, tuple[Tensor, Tensor]]:
        """Posterior ``(loc, scale)`` of each block for cells with observed ``values`` and ``labels``."""
        y = self.inputs(values)
        if "joint" not in self.encoders:
            return {name: enc(y, self.labels_for(f"{name}.encoder", labels))
                    for name, enc in self.encoders.items()}
        loc, scale = self.encoders["joint"](y, self.labels_for("joint.encoder", labels))
        dims = self.spec.cell_block_dims
        sizes = list(dims.values())
        return {name: (l, s) for name, l, s in zip(dims, loc.split(sizes, -1), scale.split(sizes, -1))}

    def latent(self, batch: Batch, *, mean: bool = True) -> dict[str, Tensor]:
        """Each block's value for the cells of ``batch``: its posterior family's point (the mean of a
        Normal), or one posterior draw with ``mean=False``."""
        out = {}
        for name, (loc, scale) in self.encode(batch).items():
            family = self.posteriors[name]
            out[name] = family.point(loc, scale) if mean else family.distribution(loc, scale).sample()
        return out

    # -- what regularisers may run (fcrkit.protocols.ModelParts, through Context's methods) ----------------
    @property
    def input_kind(self) -> InputKind:
        """What the likelihood models: ``"counts"`` or ``"real"``."""
        return self.likelihood.input_kind

    def frozen_statistics(self) -> AbstractContextManager[None]:
        """Batch norms normalise with the batch's statistics but leave their running ones alone."""
        return frozen_norm_statistics(self)

    # -- global blocks ----------------------------------------------------------------------------------
    def global_point(self, name: str) -> Tensor:
        """Global block ``name``'s representative value ``(V, dim)``: its posterior family's point (or
        its fixed value)."""
        params = self.globals[name]
        if params.is_fixed:
            return params.fixed_value
        return self.posteriors[name].point(params.loc, params.scale)

    def global_points(self) -> dict[str, Tensor]:
        """:meth:`global_point` of every global block, by name."""
        return {name: self.global_point(name) for name in self.globals}

    @torch.no_grad()
    def global_sample(self) -> dict[str, Tensor]:
        """One joint draw of every global block from its posterior (a fixed block: its value), by name;
        from torch's global random stream."""
        draws = {}
        for name, params in self.globals.items():
            family = self.posteriors[name]
            draws[name] = (params.fixed_value if params.is_fixed
                           else family.distribution(params.loc, params.scale).sample())
        return draws

    def global_moments(self, name: str) -> dict[str, Tensor]:
        """What global block ``name``'s posterior family exposes of it (``loc``, ``scale``), ``(V, dim)`` each;
        a fixed block: its value as ``loc``."""
        params = self.globals[name]
        if params.is_fixed:
            return {"loc": params.fixed_value}
        return self.posteriors[name].read_moments(self.posteriors[name].distribution(params.loc, params.scale))

    @torch.no_grad()
    def fix_global(self, name: str, value: Tensor | None) -> None:
        """Fix global block ``name`` at ``value`` ``(V, dim)``: no longer a site, only a constant of the model
        (its prior and posterior terms leave the objective); ``value=None`` frees it again."""
        if name not in self.globals:
            raise ConfigError(f"fix_global(): {name!r} is not a global block of model {self.spec.name!r} "
                              f"(global blocks: {listing(list(self.globals)) or 'none'}).")
        params = self.globals[name]
        if value is None:
            params.is_fixed.fill_(False)
            return
        value = torch.as_tensor(value, dtype=params.fixed_value.dtype, device=params.fixed_value.device)
        if value.shape != params.fixed_value.shape:
            raise ConfigError(f"fix_global(): block {name!r} takes a value of shape {tuple(params.fixed_value.shape)}, "
                              f"got {tuple(value.shape)}.")
        params.fixed_value.copy_(value)
        params.is_fixed.fill_(True)

    def prior_distribution(self, block: str, labels: Labels, n: int) -> dist.Distribution:
        """The prior of ``block`` for ``n`` cells with ``labels``, without its ``to_event`` wrapper."""
        prior = self.priors[block].distribution(self.labels_for(f"{block}.prior", labels), n)
        return prior.base_dist if isinstance(prior, dist.Independent) else prior

    def decode_mean(self, z: Mapping[str, Tensor], labels: Labels, library: Tensor, *, sample: bool = False) -> Tensor:
        """Expected expression given block values ``z`` (on the data's scale).

        With ``sample``, a draw from the likelihood instead (from torch's global random stream); draws of a
        count likelihood are clipped at 0 (``lognorm_gaussian`` puts a little mass below 0).
        """
        z = {**self.global_points(), **z}  # the combiner reads global blocks from z too
        params = self.decoder(self.combiner(z, self.labels_for("combiner", labels)), self.labels_for("decoder", labels))
        if not sample:
            return self.likelihood.mean(params, library)
        draw = self.likelihood.distribution(params, library).sample()
        return draw.clamp_min(0.0) if self.likelihood.input_kind == "counts" else draw

    def context(self, guide_trace: Trace, batch: Batch, n_obs: int, epoch: int = 0, progress: float = 0.0,
                pairs: int = 0) -> Context:
        """What regularisers see of a minibatch, read off the guide's trace.

        ``loc`` and ``scale`` hold what each per-cell block's posterior family exposes (its ``moments``);
        ``globals`` the value of each global block (its site's, or its fixed value) and
        ``global_loc`` what its family exposes as ``loc`` (a mask's probabilities), for blocks that
        are sites.
        """
        z, families = {}, {b.name: b.posterior.name for b in self.spec.blocks}
        moments: dict[str, dict[str, Tensor]] = {"loc": {}, "scale": {}}
        lacking: dict[str, dict[str, str]] = {"loc": {}, "scale": {}}
        found, global_loc = {}, {}
        for name, params in self.globals.items():
            if params.is_fixed:
                found[name] = params.fixed_value
                continue
            site = guide_trace.nodes[name]
            found[name] = site["value"]
            exposed = self.posteriors[name].read_moments(site["fn"])
            if "loc" in exposed:
                global_loc[name] = exposed["loc"]
        for name in self.spec.cell_block_dims:
            family = self.posteriors[name]
            site = guide_trace.nodes[name]
            z[name] = site["value"]
            exposed = family.read_moments(site["fn"])
            for moment in moments:
                if moment in exposed:
                    moments[moment][name] = exposed[moment]
                else:
                    lacking[moment][name] = families[name]
        loc, scale = (BlockMoments(moments[m], m, lacking[m]) for m in ("loc", "scale"))
        return Context(z, loc, scale, batch.labels, batch.index, n_obs, epoch, progress, pairs, y=batch.y,
                       library=batch.library, parts=self, globals=found, global_loc=global_loc)
