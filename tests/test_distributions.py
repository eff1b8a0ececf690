"""GeneNegativeBinomial, the fast NB of the "nb" likelihood: same values and gradients as Pyro's NB."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from fcrkit.components.distributions import GeneNegativeBinomial, _count_terms, nb_log_prob

F64 = torch.float64


def _case(shape=(6, 25), seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    y = torch.poisson(torch.rand(shape, generator=g, dtype=dtype) * 4)
    y[torch.rand(shape, generator=g, dtype=dtype) < 0.6] = 0  # sparse, like single-cell counts
    y[0] = 0  # an empty cell
    logits = (torch.randn(shape, generator=g, dtype=dtype) * 2).requires_grad_()
    log_library = (torch.rand(shape[:-1] + (1,), generator=g, dtype=dtype) * 4 + 1).requires_grad_()
    log_theta = (torch.randn(shape[-1], generator=g, dtype=dtype) * 3).requires_grad_()
    return y, logits, log_library, log_theta


def _pyro_nb(y, logits, log_library, log_theta):
    log_mu = log_library + torch.log_softmax(logits, -1)
    return dist.NegativeBinomial(total_count=log_theta.exp(), logits=log_mu - log_theta).to_event(1).log_prob(y)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_values_and_gradients_equal_pyro(dtype):
    y, logits, log_library, log_theta = _case(dtype=dtype)
    weights = torch.randn(y.shape[0], dtype=dtype)  # unequal weights per cell exercise the backward fully
    ours = GeneNegativeBinomial(logits, log_library, log_theta).log_prob(y)
    theirs = _pyro_nb(y, logits, log_library, log_theta)
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-10}
    torch.testing.assert_close(ours, theirs, **tol)
    inputs = (logits, log_library, log_theta)
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), inputs),
                    torch.autograd.grad((theirs * weights).sum(), inputs)):
        torch.testing.assert_close(a, b, **tol)


def test_gradcheck():
    y, logits, log_library, log_theta = _case(shape=(3, 5))
    assert torch.autograd.gradcheck(lambda a, b, c: nb_log_prob(y, a, b, c), (logits, log_library, log_theta))


def test_sparse_count_terms_equal_the_dense_formula():
    y, _, _, log_theta = _case(shape=(40, 30))
    theta = log_theta.exp()
    dense = (torch.lgamma(y + theta) - torch.lgamma(theta) - torch.lgamma(y + 1)).sum(-1)
    torch.testing.assert_close(_count_terms(y, theta), dense, rtol=1e-12, atol=1e-10)
    assert _count_terms(torch.zeros(3, 30, dtype=F64), theta).abs().max() == 0  # empty cells


def test_leading_sample_dimensions_broadcast():
    y, logits, log_library, log_theta = _case()
    particles = logits.detach().unsqueeze(0) + torch.randn(4, *logits.shape, dtype=F64)
    ours = GeneNegativeBinomial(particles, log_library, log_theta).log_prob(y)
    assert ours.shape == (4, y.shape[0])
    torch.testing.assert_close(ours, _pyro_nb(y, particles, log_library, log_theta), rtol=1e-12, atol=1e-10)


def test_expand_mean_variance_and_samples():
    _, logits, log_library, log_theta = _case(shape=(1, 4))
    d = GeneNegativeBinomial(logits.detach(), log_library.detach(), log_theta.detach().clamp(-1, 2))
    wide = d.expand(torch.Size([3]))
    assert wide.batch_shape == (3,) and wide.event_shape == (4,)
    torch.manual_seed(0)
    samples = d.sample(torch.Size([40_000]))
    assert samples.shape == (40_000, 1, 4) and (samples == samples.round()).all() and (samples >= 0).all()
    se = (d.variance / 40_000).sqrt()
    assert ((samples.mean(0) - d.mean).abs() < 5 * se).all()
    assert ((samples.var(0) / d.variance - 1).abs() < 0.1).all()


def test_log_theta_must_be_one_per_gene():
    y, logits, log_library, _ = _case()
    with pytest.raises(ValueError, match=r"log_theta must have shape \(25,\)"):
        GeneNegativeBinomial(logits, log_library, torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the dense count-term path)")
def test_cuda_dense_path_equals_the_cpu_sparse_path():
    y, logits, log_library, log_theta = _case(shape=(64, 200))
    on_cpu = nb_log_prob(y, logits, log_library, log_theta)
    cuda = [v.detach().cuda().requires_grad_(v.requires_grad) for v in (y, logits, log_library, log_theta)]
    on_gpu = nb_log_prob(*cuda)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-10, atol=1e-9)
    grads_gpu = torch.autograd.grad(on_gpu.sum(), cuda[1:])
    grads_cpu = torch.autograd.grad(on_cpu.sum(), (logits, log_library, log_theta))
    for a, b in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-9)
