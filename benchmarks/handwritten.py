"""The practical limit: minimal hand-written PyTorch training steps for the networks and losses of
fcrkit's ``SCVI`` and ``FCR`` recipes, with no Pyro and no framework (used by ``throughput.py``).

:class:`HandSCVI` writes scVI's networks out layer by layer (encoder Linear-BatchNorm-ReLU-Dropout
with mean and softplus-scale heads; decoder Linear-BatchNorm-ReLU and a gene head; a per-gene NB
dispersion) and its loss: ``-E_q[log p(y | z)] + w_kl KL(q || N(0, I))`` per cell, one sample.
The NB log-likelihood is either the textbook formula (three dense ``lgamma`` calls, as scvi-tools
writes it) or fcrkit's kernel (:func:`fcrkit.components.distributions.nb_log_prob`).

:func:`fcr_step` trains exactly the networks of a built ``FCR`` model (its encoders, priors,
decoder, classifiers and discriminators, read as plain ``nn.Module`` layers) with FCR's objective
written out in torch: a batch plus a control partner of each cell, the ELBO of both with the
conditional-prior KL, the classifier, similarity and permutation terms, and one Adam step of each
discriminator on detached latents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from fcrkit.components.distributions import nb_log_prob
from fcrkit.components.structure import permute_within

MIN_SCALE = 1e-4


def textbook_nb_log_prob(y: Tensor, logits: Tensor, log_library: Tensor, log_theta: Tensor) -> Tensor:
    """NB log-likelihood per cell, written as in scvi-tools' ``log_nb_positive`` (dense lgamma)."""
    theta, mu, eps = log_theta.exp(), log_library.exp() * torch.softmax(logits, dim=-1), 1e-8
    log_theta_mu = torch.log(theta + mu + eps)
    res = (theta * (torch.log(theta + eps) - log_theta_mu) + y * (torch.log(mu + eps) - log_theta_mu)
           + torch.lgamma(y + theta) - torch.lgamma(theta) - torch.lgamma(y + 1))
    return res.sum(-1)


NB_KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "textbook": textbook_nb_log_prob,
    "fcrkit": nb_log_prob,
}


def normal_kl(loc: Tensor, scale: Tensor, prior_loc: Tensor | float = 0.0, prior_scale: Tensor | float = 1.0) -> Tensor:
    """KL(N(loc, scale) || N(prior_loc, prior_scale)) summed over the last dimension."""
    prior_scale = torch.as_tensor(prior_scale, dtype=loc.dtype)
    var_ratio = (scale / prior_scale).square()
    return 0.5 * (var_ratio + ((loc - prior_loc) / prior_scale).square() - 1 - var_ratio.log()).sum(-1)


class HandSCVI(nn.Module):
    """scVI's networks, written out (1 hidden layer of ``n_hidden``, ``n_latent`` latents, NB)."""

    def __init__(self, n_genes: int, n_hidden: int = 128, n_latent: int = 10, dropout: float = 0.1,
                 kernel: str = "fcrkit"):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_genes, n_hidden), nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3),
                                     nn.ReLU(), nn.Dropout(dropout))
        self.loc, self.scale = nn.Linear(n_hidden, n_latent), nn.Linear(n_hidden, n_latent)
        self.decoder = nn.Sequential(nn.Linear(n_latent, n_hidden), nn.BatchNorm1d(n_hidden, momentum=0.01, eps=1e-3),
                                     nn.ReLU(), nn.Linear(n_hidden, n_genes))
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.nb = NB_KERNELS[kernel]

    def loss(self, y: Tensor, library: Tensor, kl_weight: float) -> Tensor:
        """Negative ELBO per cell, averaged over the batch."""
        h = self.encoder(torch.log1p(y))
        loc, scale = self.loc(h), F.softplus(self.scale(h)) + MIN_SCALE
        z = loc + scale * torch.randn_like(loc)
        return (kl_weight * normal_kl(loc, scale) - self.nb(y, self.decoder(z), library.log(), self.log_theta)).mean()


def scvi_step(model: HandSCVI, optimizer: torch.optim.Optimizer, y: Tensor, library: Tensor,
              kl_weight: float) -> Tensor:
    """One Adam step of :class:`HandSCVI`; returns the (detached) loss."""
    loss = model.loss(y, library, kl_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _gaussian(encoder: nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """An fcrkit MLP encoder's layers applied by hand: trunk, mean head, softplus scale head."""
    h = encoder.trunk(inputs)
    return encoder.loc(h), F.softplus(encoder.scale(h)) + encoder.min_scale


def _prior(prior: nn.Module, labels: Tensor) -> tuple[Tensor, Tensor]:
    """A conditional-Gaussian prior's layers applied by hand (concatenated-label embedding)."""
    h = prior.embed["all"](labels)
    return prior.loc(h), F.softplus(prior.scale(h)) + prior.min_scale


def _conditions(x: Tensor, t: Tensor) -> Tensor:
    return torch.unique(torch.cat([t, x], dim=-1), dim=0, return_inverse=True)[1]


ADVERSARIES = ("permutation_t", "permutation_x")


def fcr_optimizers(module: nn.Module, lr: float = 1e-3) -> tuple[Optimizer, dict[str, Optimizer]]:
    """Adam over an FCR module's parameters except the discriminators', and one Adam per discriminator."""
    adversary_params = {id(p) for name in ADVERSARIES for p in module.regularizers[name].adversary.parameters()}
    optimizer = torch.optim.Adam([p for p in module.parameters() if id(p) not in adversary_params], lr=lr)
    return optimizer, {name: torch.optim.Adam(module.regularizers[name].adversary.parameters(), lr=lr)
                       for name in ADVERSARIES}


def fcr_step(module: nn.Module, optimizer: torch.optim.Optimizer, adversaries: dict[str, torch.optim.Optimizer],
             y: Tensor, library: Tensor, x: Tensor, t: Tensor, weights: dict[str, float], kl_weight: float) -> Tensor:
    """One FCR step on a batch whose second half holds the first half's control partners.

    ``module`` is the ``GenerativeModel`` of an ``FCR`` recipe (only its layers are used);
    ``weights`` the regulariser weights. Returns the (detached) total loss.
    """
    n = y.shape[0] // 2
    inputs = torch.log1p(y)
    seen = {"x": x, "t": t, "tx": torch.cat([x, t], dim=-1)}
    loc, scale, z, kl = {}, {}, {}, 0.0
    for block in ("x", "tx", "t"):
        loc[block], scale[block] = _gaussian(module.encoders[block], torch.cat([inputs, seen[block]], dim=-1))
        z[block] = loc[block] + scale[block] * torch.randn_like(loc[block])
        kl = kl + normal_kl(loc[block], scale[block], *_prior(module.priors[block], seen[block]))
    h = module.decoder.trunk(torch.cat([z["x"], z["tx"], z["t"]], dim=-1))
    logits, log_theta = module.decoder.heads["mean"](h), module.likelihood.bounded_log_theta()
    log_likelihood = nb_log_prob(y, logits, library.log(), log_theta)
    elbo = (kl_weight * kl - log_likelihood).sum() / n

    regs = module.regularizers
    own = {k: v[:n] for k, v in z.items()}  # classifiers and discriminators count each cell once
    terms = {
        "treatment_classifier": F.binary_cross_entropy_with_logits(
            regs["treatment_classifier"].classifier(own["t"]), (t[:n] > 0).float(), reduction="none").sum(-1).mean(),
        "covariate_classifier": F.cross_entropy(  # one covariate column: one softmax
            regs["covariate_classifier"].classifier(own["x"]), x[:n].argmax(-1)),
    }
    treated = (t[:n].sum(-1) > 0).float()
    cos_t = F.cosine_similarity(loc["t"][:n], loc["t"][n:], dim=-1)
    terms["similarity"] = ((cos_t * treated).sum() / treated.sum().clamp_min(1.0)
                           - F.cosine_similarity(loc["x"][:n], loc["x"][n:], dim=-1).mean())
    groups = _conditions(x[:n], t[:n])
    pairs = {"permutation_t": ("t", "tx"), "permutation_x": ("x", "tx")}

    def discrimination(name: str, latents: dict[str, Tensor]) -> Tensor:
        a, b = (latents[k] for k in pairs[name])
        net = regs[name].adversary
        permutation = permute_within(groups)
        keep = (permutation != torch.arange(n)).float()  # a cell alone in its condition cannot be permuted
        real = net(torch.cat([a, b], dim=-1)).squeeze(-1)
        fake = net(torch.cat([a, b.index_select(0, permutation)], dim=-1)).squeeze(-1)
        bce = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="none")
               + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="none"))
        return (bce * keep).sum() / keep.sum().clamp_min(1.0)

    for name in pairs:
        terms[name] = -discrimination(name, own)
    total = elbo + sum(weights[name] * term for name, term in terms.items())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    detached = {k: v.detach() for k, v in own.items()}
    for name, adversary in adversaries.items():
        adversary.zero_grad(set_to_none=True)
        discrimination(name, detached).backward()
        adversary.step()
    return total.detach()
