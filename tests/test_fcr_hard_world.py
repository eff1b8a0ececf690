"""FCR on the harder interaction world (``fcrkit.simulate.hard_interaction``) and the prior it needs.

The full three-seed table (FCR, β-VAE, PCA) is ``benchmarks/fcr_hard_world.py``; its numbers are in
``docs/recipes/fcr.md``.
"""

from __future__ import annotations

import torch

from fcrkit.components.priors import ConditionalGaussian


def _fit_means(prior: ConditionalGaussian, labels: dict[str, torch.Tensor], target: torch.Tensor) -> float:
    """Mean squared error of the prior's means after fitting them to ``target`` by Adam."""
    optimizer = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        loss = ((prior.distribution(labels, len(target)).base_dist.loc - target) ** 2).mean()
        loss.backward()
        optimizer.step()
    return float(loss)


def test_outer_prior_is_a_free_table_of_the_conditions():
    """With ``combine="outer"`` and no hidden layer the prior's mean can take any value per
    (covariate, treatment) pair, controls included: it fits a pure interaction (no additive part)
    exactly, which the linear ``concat`` prior cannot."""
    torch.manual_seed(0)
    n_x, n_t = 3, 3  # treatments 0 (control, all-zero label), 1, 2
    x = torch.eye(n_x).repeat_interleave(n_t + 1, 0)
    t = torch.cat([torch.zeros(1, n_t), torch.eye(n_t)]).repeat(n_x, 1)
    table = torch.randn(n_x, n_t + 1, 2)
    table = table - table.mean(0, keepdim=True) - table.mean(1, keepdim=True) + table.mean((0, 1), keepdim=True)
    target = table.reshape(-1, 2)
    labels = {"x": x, "t": t}
    errors = {combine: _fit_means(ConditionalGaussian(2, {"x": n_x, "t": n_t}, combine=combine, n_layers=0),
                                  labels, target)
              for combine in ("outer", "concat")}
    assert errors["outer"] < 1e-4 * float((target**2).mean()) < 0.5 * errors["concat"], errors
