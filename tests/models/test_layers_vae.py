"""Building blocks of the Mult-VAE / EVCF models against direct NumPy / SciPy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.special import expit, log_softmax, logsumexp
from scipy.stats import norm

from recbole_ext.layers.gated import GatedDense, hidden_layer
from recbole_ext.layers.vae import (
    UserHistory,
    bernoulli_log_likelihood,
    clip_logvar,
    he_init_,
    kl_standard_normal,
    linear_anneal,
    log_normal_diag,
    multinomial_log_likelihood,
    warmup_beta,
)
from recbole_ext.layers.vamp import PseudoInputs, vamp_log_prior
from recbole_ext.optim import AdamNormGrad, attach_gradient_normalization


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def test_user_history_rows_equal_the_dense_matrix() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((9, 13)) < 0.3).astype(np.float32)
    dense[4] = 0  # a user with no training items
    history = UserHistory(sp.csr_matrix(dense))
    users = torch.tensor([3, 4, 0, 3, 8])
    np.testing.assert_array_equal(history(users).numpy(), dense[users.numpy()])


def test_log_normal_and_kl_match_scipy() -> None:
    rng = np.random.default_rng(1)
    x, mean, logvar = rng.normal(size=(3, 4, 5))
    expected = norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(-1)
    np.testing.assert_allclose(log_normal_diag(t(x), t(mean), t(logvar)).numpy(), expected)
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2 per dimension.
    s2 = np.exp(logvar)
    kl = (-0.5 * logvar + 0.5 * (s2 + mean**2) - 0.5).sum(-1)
    np.testing.assert_allclose(kl_standard_normal(t(mean), t(logvar)).numpy(), kl)


def test_likelihoods_match_direct_formulas() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(4, 7))
    logits[0, 0] = 40.0  # saturates: EVCF clamps the Bernoulli mean to 1 - 1e-5
    x = (rng.random((4, 7)) < 0.4).astype(np.float64)
    x[0, 0] = 0.0
    multinomial = (log_softmax(logits, axis=1) * x).sum(1)
    np.testing.assert_allclose(multinomial_log_likelihood(t(logits), t(x)).numpy(), multinomial)
    p = np.clip(expit(logits), 1e-5, 1 - 1e-5)
    bernoulli = (x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1)
    np.testing.assert_allclose(bernoulli_log_likelihood(t(logits), t(x)).numpy(), bernoulli)


def test_beta_schedules() -> None:
    # Mult-VAE: per optimizer step, from 0, capped.
    assert [linear_anneal(s, 200_000, 0.2) for s in (0, 1, 20_000, 40_000, 10**6)] == [
        0.0,
        1 / 200_000,
        0.1,
        0.2,
        0.2,
    ]
    assert linear_anneal(5, 0, 0.2) == 0.2
    # EVCF: per 1-based epoch, capped; warmup 0 means max_beta from the start.
    assert [warmup_beta(e, 100, 0.3) for e in (1, 50, 100, 250)] == pytest.approx(
        [0.003, 0.15, 0.3, 0.3]
    )
    assert warmup_beta(1, 0, 0.3) == 0.3


def test_clip_logvar() -> None:
    got = clip_logvar(torch.tensor([-50.0, -12.0, 0.5, 4.0, 9.0]))
    assert got.tolist() == [-12.0, -12.0, 0.5, 4.0, 4.0]


def test_gated_dense_is_linear_times_sigmoid_gate() -> None:
    torch.manual_seed(0)
    layer = GatedDense(6, 4).double()
    h = torch.randn(5, 6, dtype=torch.float64)
    w, b = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
    wg, bg = layer.gate.weight.detach().numpy(), layer.gate.bias.detach().numpy()
    hn = h.numpy()
    expected = (hn @ w.T + b) * expit(hn @ wg.T + bg)
    np.testing.assert_allclose(layer(h).detach().numpy(), expected)
    assert isinstance(hidden_layer(6, 4, gated=True), GatedDense)
    tanh_layer = hidden_layer(6, 4, gated=False).double()
    lin = tanh_layer[0]
    expected_tanh = np.tanh(hn @ lin.weight.detach().numpy().T + lin.bias.detach().numpy())
    np.testing.assert_allclose(tanh_layer(h).detach().numpy(), expected_tanh)


def test_vamp_log_prior_is_the_mixture_density() -> None:
    rng = np.random.default_rng(3)
    k, d = 5, 3
    means, logvars = rng.normal(size=(2, k, d))
    z = rng.normal(size=(4, d)) * 2
    # Explicit mixture: log (1/K) sum_k prod_d N(z_d; m_kd, s_kd).
    comp = np.stack(
        [norm.logpdf(z, means[j], np.exp(0.5 * logvars[j])).sum(1) for j in range(k)], axis=1
    )
    expected = logsumexp(comp, axis=1) - math.log(k)
    direct = np.log(np.exp(comp).mean(1))
    np.testing.assert_allclose(expected, direct)
    got = vamp_log_prior(t(z), t(means), t(logvars)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_pseudo_inputs_are_hardtanh_of_linear_identity() -> None:
    torch.manual_seed(0)
    pseudo = PseudoInputs(n_components=50, input_size=400, mean=0.05, std=0.01)
    weight = pseudo.weight.detach()
    assert abs(weight.mean().item() - 0.05) < 1e-3 and abs(weight.std().item() - 0.01) < 1e-3
    with torch.no_grad():
        pseudo.weight[0, :3] = torch.tensor([-0.5, 0.3, 1.7])
    linear = torch.nn.Linear(50, 400, bias=False)
    linear.weight.data = pseudo.weight.detach().clone()
    expected = torch.nn.functional.hardtanh(linear(torch.eye(50)), 0.0, 1.0)
    got = pseudo()
    assert got.shape == (50, 400)
    torch.testing.assert_close(got, expected)
    assert got[:3, 0].tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_he_init_std() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(800, 300)
    he_init_(layer)
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.02)


def _direct_adam_normgrad(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for step, g in enumerate(grads, start=1):
        g = g / (np.linalg.norm(g) + 1e-7)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * math.sqrt(1 - b2**step) / (1 - b1**step) * m / (np.sqrt(v) + eps)
    return p


def test_adam_normgrad_matches_direct_update() -> None:
    rng = np.random.default_rng(4)
    p0 = rng.normal(size=(3, 4))
    grads = [rng.normal(scale=s, size=(3, 4)) for s in (10.0, 0.01, 3.0)]
    param = torch.nn.Parameter(t(p0))
    opt = AdamNormGrad([param], lr=0.05)
    for g in grads:
        param.grad = t(g)
        opt.step()
    np.testing.assert_allclose(param.detach().numpy(), _direct_adam_normgrad(p0, grads, 0.05))


def test_gradient_hooks_with_adam_equal_adam_normgrad() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 5)
    y = torch.randn(16, 1)
    nets = [torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))]
    nets.append(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)))
    nets[1].load_state_dict(nets[0].state_dict())
    attach_gradient_normalization(nets[1])
    opts = [
        AdamNormGrad(nets[0].parameters(), lr=0.01),
        torch.optim.Adam(nets[1].parameters(), lr=0.01),
    ]
    for _ in range(4):
        for net, opt in zip(nets, opts, strict=True):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            if net is nets[1]:
                norms = [p.grad.norm().item() for p in net.parameters()]
                assert norms == pytest.approx([1.0] * len(norms), abs=1e-6)
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_vamp_log_prior_float32_with_extreme_variances() -> None:
    # The matmul expansion must stay accurate where the clipped variances are tiny (e^-12) and z
    # sits on a component mean, against the direct [B, K, D] computation in float64.
    torch.manual_seed(0)
    k, d = 50, 16
    means = torch.randn(k, d)
    logvars = torch.full((k, d), -12.0)
    logvars[::2] = 4.0
    z = means[:8] + 1e-3 * torch.randn(8, d)
    direct = torch.logsumexp(
        log_normal_diag(z.double()[:, None], means.double()[None], logvars.double()[None]), 1
    ) - math.log(k)
    got = vamp_log_prior(z, means, logvars)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), direct, rtol=1e-6, atol=1e-4)
