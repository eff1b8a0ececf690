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

Components are looked up in the registry by name; each sees only the labels its spec lists.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.poutine import Trace
from torch import Tensor, nn

from fcrkit.components.nn import lognormalize
from fcrkit.data.loaders import Batch
from fcrkit.errors import ConfigError, listing
from fcrkit.protocols import BlockMoments, Context, Labels, ModelInfo
from fcrkit.registry import Registry, get_registry
from fcrkit.spec import ComponentSpec, ModelSpec


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
        n_latent = sum(spec.block_dims.values())
        for block in spec.blocks:
            self.priors[block.name] = self._build(registry, "prior", block.prior, f"{block.name}.prior", block.dim)
            self.posteriors[block.name] = registry.build("posterior", block.posterior.name, block.dim,
                                                         **block.posterior.options)
            if spec.joint_encoder is None:
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
        self.combiner = self._build(registry, "combiner", spec.combiner, "combiner", spec.block_dims)
        self.decoder = self._build(
            registry, "decoder", spec.decoder, "decoder", self.combiner.n_output, self.n_genes,
            tuple(self.likelihood.heads)
        )
        groups = {k: tuple(int(w) for w in v) for k, v in (label_groups or {}).items()}
        info = ModelInfo(spec.block_dims, self.label_dims, self.n_genes, groups)
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
        missing = [c for c in comp.conditions if c not in self.label_dims]
        if missing:
            what = {"x": "covariate_keys", "t": "treatment_key"}
            raise ConfigError(
                f"{kind} {comp.name!r} ({key}) conditions on {listing(missing)}, but the data has no such "
                f"labels: pass {' and '.join(what[m] for m in missing)} to fcrkit.setup_anndata."
            )
        self._conditions[key] = comp.conditions
        dims = {c: self.label_dims[c] for c in comp.conditions}
        options = dict(comp.options)
        if self.treatment_features is not None and "t" in comp.conditions and "treatment_features" not in options:
            factory = registry.get(kind, comp.name).factory
            if "treatment_features" in inspect.signature(factory).parameters:
                options["treatment_features"] = self.treatment_features
        built = registry.build(kind, comp.name, *args, dims, **options)
        self.uses_treatment_features |= getattr(built, "treatment_encoder", None) is not None
        return built

    def labels_for(self, key: str, labels: Labels) -> dict[str, Tensor]:
        """The labels component ``key`` (e.g. ``"z.encoder"``) sees."""
        return {c: labels[c] for c in self._conditions[key]}

    def inputs(self, y: Tensor) -> Tensor:
        """What the encoders see of the data."""
        if self.encoder_input == "lognorm":
            return lognormalize(y)
        return torch.log1p(y) if self.encoder_input == "log1p" else y

    # -- Pyro programs ------------------------------------------------------------------------------
    def model(self, batch: Batch, n_obs: int) -> None:
        """p(y, z | labels) for the cells of ``batch``; ``n_obs`` is the plate size (training cells)."""
        n = batch.y.shape[0]
        with pyro.plate("cells", n_obs, subsample=batch.index):
            z = {name: self._sample_prior(name, prior, batch.labels, n) for name, prior in self.priors.items()}
            params = self.decoder(self.combiner(z, self.labels_for("combiner", batch.labels)),
                                  self.labels_for("decoder", batch.labels))
            pyro.sample("y", self.likelihood.distribution(params, batch.library), obs=batch.y)

    def _sample_prior(self, name: str, prior: nn.Module, labels: Labels, n: int) -> Tensor:
        """Block ``name``'s site: the prior's own program if it has one, else a draw of its distribution."""
        labels = self.labels_for(f"{name}.prior", labels)
        if callable(getattr(prior, "sample", None)):
            return prior.sample(name, labels, n)
        return pyro.sample(name, prior.distribution(labels, n))

    def guide(self, batch: Batch, n_obs: int) -> None:
        """q(z | y, labels) for the cells of ``batch``."""
        posterior = self.encode(batch)
        with pyro.plate("cells", n_obs, subsample=batch.index):
            for name, (loc, scale) in posterior.items():
                pyro.sample(name, self.posteriors[name].distribution(loc, scale))

    @property
    def enumerated_blocks(self) -> list[str]:
        """Blocks whose prior is a program with discrete sites to enumerate (they need ``TraceEnum_ELBO``)."""
        return [name for name, prior in self.priors.items() if callable(getattr(prior, "sample", None))]

    # -- deterministic use of the parts ---------------------------------------------------------------
    def encode(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        """Posterior ``(loc, scale)`` of each block for the cells of ``batch``."""
        y = self.inputs(batch.y)
        if "joint" not in self.encoders:
            return {name: enc(y, self.labels_for(f"{name}.encoder", batch.labels))
                    for name, enc in self.encoders.items()}
        loc, scale = self.encoders["joint"](y, self.labels_for("joint.encoder", batch.labels))
        sizes = list(self.spec.block_dims.values())
        return {name: (l, s) for name, l, s in zip(self.spec.block_dims, loc.split(sizes, -1), scale.split(sizes, -1))}

    def latent(self, batch: Batch, *, mean: bool = True) -> dict[str, Tensor]:
        """Each block's value for the cells of ``batch``: its posterior family's point (the mean of a
        Normal), or one posterior draw with ``mean=False``."""
        out = {}
        for name, (loc, scale) in self.encode(batch).items():
            family = self.posteriors[name]
            out[name] = family.point(loc, scale) if mean else family.distribution(loc, scale).sample()
        return out

    def prior_distribution(self, block: str, labels: Labels, n: int) -> dist.Distribution:
        """The prior of ``block`` for ``n`` cells with ``labels``, without its ``to_event`` wrapper."""
        prior = self.priors[block].distribution(self.labels_for(f"{block}.prior", labels), n)
        return prior.base_dist if isinstance(prior, dist.Independent) else prior

    def decode_mean(self, z: Mapping[str, Tensor], labels: Labels, library: Tensor, *, sample: bool = False) -> Tensor:
        """Expected expression given block values ``z`` (on the data's scale).

        With ``sample``, a draw from the likelihood instead (from torch's global random stream); draws of a
        count likelihood are clipped at 0 (``lognorm_gaussian`` puts a little mass below 0).
        """
        params = self.decoder(self.combiner(z, self.labels_for("combiner", labels)), self.labels_for("decoder", labels))
        if not sample:
            return self.likelihood.mean(params, library)
        draw = self.likelihood.distribution(params, library).sample()
        return draw.clamp_min(0.0) if self.likelihood.input_kind == "counts" else draw

    def context(self, guide_trace: Trace, batch: Batch, n_obs: int, epoch: int = 0, progress: float = 0.0,
                pairs: int = 0) -> Context:
        """What regularisers see of a minibatch, read off the guide's trace.

        ``loc`` and ``scale`` hold what each block's posterior family exposes (its ``moments``).
        """
        z, families = {}, {b.name: b.posterior.name for b in self.spec.blocks}
        moments: dict[str, dict[str, Tensor]] = {"loc": {}, "scale": {}}
        lacking: dict[str, dict[str, str]] = {"loc": {}, "scale": {}}
        for name, family in self.posteriors.items():
            site = guide_trace.nodes[name]
            z[name] = site["value"]
            exposed = family.read_moments(site["fn"])
            for moment in moments:
                if moment in exposed:
                    moments[moment][name] = exposed[moment]
                else:
                    lacking[moment][name] = families[name]
        loc, scale = (BlockMoments(moments[m], m, lacking[m]) for m in ("loc", "scale"))
        return Context(z, loc, scale, batch.labels, batch.index, n_obs, epoch, progress, self, pairs,
                       y=batch.y, library=batch.library)
