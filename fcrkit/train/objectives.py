"""Training objectives: which bound of ``log p(y)`` SVI climbs, and which model/objective pairs are refused.

``model.train(elbo=..., num_particles=k)`` takes

* ``"trace_meanfield"`` (default): the ELBO with the analytic KL of each block where Pyro has one
  (a Normal posterior against a Normal prior), a one-sample estimate elsewhere (a flow or delta
  posterior, a non-Normal prior): for those blocks it is ``"trace"``;
* ``"trace"``: the ELBO, every KL term estimated from the posterior draws;
* ``"iwae"``: the importance-weighted bound of Burda et al. (2016), Pyro's :class:`~pyro.infer.RenyiELBO`
  at ``alpha = 0``, taken per cell over ``k`` draws: ``log (1/k) Σ_j p(y, z_j) / q(z_j | y)``;
* ``"trace_enum"``: the ELBO with the discrete sites of a prior program (a mixture's component, say)
  summed out exactly by :class:`~pyro.infer.TraceEnum_ELBO`.

``num_particles`` averages the ELBO objectives over ``k`` draws and sets the ``k`` of ``"iwae"``. A
``pyro.infer.ELBO`` instance is also accepted as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from fcrkit.errors import ConfigError, listing


class IWAE(RenyiELBO):
    """Pyro's :class:`~pyro.infer.RenyiELBO` at ``alpha = 0`` (the IWAE bound), per cell, differentiable.

    Each cell of a minibatch gets its own bound ``log (1/k) Σ_j w_j`` from ``k`` draws of the guide
    (log weights from the sites' unscaled log-densities), and the minibatch's sum is scaled like the
    likelihood site (by the cells plate's subsampling), so that, like the other objectives, it
    estimates the bound of the whole data set. Its gradient is the IWAE gradient of reparameterised
    draws.
    """

    def __init__(self, num_particles: int = 2):
        super().__init__(alpha=0, num_particles=num_particles)

    def differentiable_loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any,
                            **kwargs: Any) -> torch.Tensor:
        """Minus the importance-weighted bound (what the trainer minimises)."""
        log_weights, scale = [], 1.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            log_w = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] != "sample" or site_is_subsample(site):
                        continue
                    if site["is_observed"]:
                        if trace is guide_trace:
                            continue
                        scale = site["scale"]  # the cells plate's subsampling, n_obs / batch
                    log_w = log_w + sign * site["unscaled_log_prob"]
            log_weights.append(log_w)
        bound = torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(self.num_particles)
        return -(scale * bound).sum()


OBJECTIVES: dict[str, Callable[[int], ELBO]] = {
    "trace_meanfield": lambda k: TraceMeanField_ELBO(num_particles=k),
    "trace": lambda k: Trace_ELBO(num_particles=k),
    "iwae": IWAE,
    # max_plate_nesting=1: the cells plate; enumerated sites take the dimensions left of it
    "trace_enum": lambda k: TraceEnum_ELBO(num_particles=k, max_plate_nesting=1),
}


def resolve_objective(elbo: str | ELBO, num_particles: int = 1) -> ELBO:
    """A Pyro ELBO from its name (see :data:`OBJECTIVES`) and ``num_particles``, or the instance given."""
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ConfigError(f"num_particles={num_particles!r} must be a positive integer.")
    if isinstance(elbo, ELBO):
        if num_particles != 1:
            raise ConfigError(f"num_particles={num_particles} is given with a pyro.infer.ELBO instance; set "
                              "num_particles on the instance instead.")
        return elbo
    if elbo not in OBJECTIVES:
        raise ConfigError(f"elbo={elbo!r} is not one of {listing(OBJECTIVES)} (or pass a pyro.infer.ELBO).")
    return OBJECTIVES[elbo](num_particles)


def evaluation_loss(elbo: ELBO, model: Callable[..., Any], guide: Callable[..., Any], *args: Any) -> torch.Tensor:
    """``elbo``'s loss without gradients (validation): its differentiable loss, except for
    ``TraceEnum_ELBO``, whose differentiable loss refuses to run without gradients."""
    if isinstance(elbo, TraceEnum_ELBO):
        return torch.as_tensor(elbo.loss(model, guide, *args))
    return elbo.differentiable_loss(model, guide, *args)


def objective_problems(elbo: str | ELBO, enumerated: Mapping[str, str],
                       handlers: Mapping[str, tuple[float, float]], global_blocks: Sequence[str] = ()) -> list[str]:
    """Why a model cannot be trained with objective ``elbo`` (empty when it can).

    Args:
        elbo: the objective's name (or an ELBO instance, judged by its class).
        enumerated: block -> prior name, for the blocks whose prior has discrete sites to sum out.
        handlers: regulariser -> (weight, warm-up epochs), for the regularisers that act through an
            effect on the ELBO's sites (``kl``).
        global_blocks: the global blocks that are sites (not fixed): ``"iwae"`` refuses them.
    """
    enum = isinstance(elbo, TraceEnum_ELBO) or elbo == "trace_enum"
    iwae = isinstance(elbo, RenyiELBO) or elbo == "iwae"
    name = elbo if isinstance(elbo, str) else type(elbo).__name__
    problems = []
    if enumerated and not enum:
        blocks = listing([f"{b} (prior {p!r})" for b, p in enumerated.items()])
        problems.append(f"block(s) {blocks} sum out a discrete site by enumeration, which elbo={name!r} cannot "
                        "do: train with elbo='trace_enum'")
    if iwae and global_blocks:
        # the per-cell bound would weigh each particle's draw of the shared global latents inside the cell's
        # log-mean-exp: not a bound of log p(y) for the data set, so refused rather than silently wrong
        problems.append(f"elbo={name!r} bounds each cell's likelihood with its own draws, but global block(s) "
                        f"{listing(list(global_blocks))} are shared by every cell: train with elbo='trace' or "
                        "'trace_meanfield' (or fix them with fix_global)")
    if iwae:
        scaled = {k: wu for k, wu in handlers.items() if wu != (1.0, 0.0)}
        if scaled:
            what = listing([f"{k} (weight {w:g}, warm-up {u:g} epochs)" for k, (w, u) in scaled.items()])
            problems.append(f"elbo={name!r} weighs whole importance weights, so regularizer(s) {what} cannot "
                            "rescale the KL of single sites: give them weight 1 and warmup_epochs 0 (recipes: "
                            "kl_warmup_epochs=0, beta=1), or train with elbo='trace' or 'trace_meanfield'")
    return problems
