"""HVamp and HVampGated (Kim & Suh, RecSys 2019: hierarchical VampPrior VAE, tanh / gated)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy.special import expit, logsumexp
from scipy.stats import norm

from recbole_ext.layers.gated import GatedDense
from recbole_ext.models.hvamp import HVamp
from recbole_ext.models.hvamp_gated import HVampGated
from tests.helpers import VAE_ITEMS, VAE_USERS, build_vae

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"
N_USERS, N_ITEMS = VAE_USERS, VAE_ITEMS
K, H, Z1, Z2 = 5, 12, 6, 4


def build(tmp_path: Path, cls: type = HVamp, **settings: Any) -> tuple[Any, Any, Any, HVamp]:
    return build_vae(
        tmp_path,
        cls,
        {"hidden_size": H, "z1_size": Z1, "z2_size": Z2, "number_components": K},
        **settings,
    )


def log_n(x: np.ndarray, mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    return norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(-1)


def test_defaults() -> None:
    for name in ("HVamp", "HVampGated"):
        d = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert (d["hidden_size"], d["num_layers"], d["z1_size"], d["z2_size"]) == (600, 2, 200, 200)
        assert (d["train_batch_size"], d["learning_rate"], d["number_components"]) == (
            200,
            0.0005,
            1000,
        )
        assert d["train_regime"] == "users" and d["normalize_gradients"] is True


def test_hierarchical_kl_on_fixed_tensors(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path)
    model.eval()
    g = torch.Generator().manual_seed(3)
    lat = {k: torch.randn(4, Z1, generator=g) for k in ("z1", "q1", "q1_lv")}
    lat.update({k: torch.randn(4, Z2, generator=g) for k in ("z2", "q2", "q2_lv")})
    with torch.no_grad():
        got = model.kl_divergence(lat).double().numpy()
        prior_means, prior_logvars = (t.double().numpy() for t in model.prior_components())
        p1, p1_lv = (t.double().numpy() for t in model.p_z1(lat["z2"]))
    a = {k: v.double().numpy() for k, v in lat.items()}

    # p(z1 | z2) written out: two tanh layers, then affine heads (logvar clipped).
    (w1, b1), (w2, b2) = (
        (m[0].weight.detach().double().numpy(), m[0].bias.detach().double().numpy())
        for m in model.p_z1_layers
    )
    h = np.tanh(np.tanh(a["z2"] @ w1.T + b1) @ w2.T + b2)
    wm, bm = model.p_z1_mean.weight.detach().double().numpy(), model.p_z1_mean.bias.detach()
    np.testing.assert_allclose(p1, h @ wm.T + bm.double().numpy(), rtol=1e-5, atol=1e-6)

    comp = np.stack([log_n(a["z2"], prior_means[k], prior_logvars[k]) for k in range(K)], axis=1)
    log_p_z2 = logsumexp(comp, axis=1) - math.log(K)
    expected = (
        log_n(a["z1"], a["q1"], a["q1_lv"])
        + log_n(a["z2"], a["q2"], a["q2_lv"])
        - log_n(a["z1"], p1, p1_lv)
        - log_p_z2
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_loss_at_test_time_uses_posterior_means(tmp_path: Path) -> None:
    _, train, _, model = build(tmp_path, warmup=0, max_beta=0.3)
    model.eval()
    users = torch.arange(1, N_USERS + 1)
    loss = model.calculate_loss({model.USER_ID: users}).item()
    x = model.history(users)
    with torch.no_grad():
        xn = torch.nn.functional.normalize(x, dim=1)
        q2, _ = model.q_z(xn)
        q1, _ = model.q_z1(xn, q2)
        lat = model.latents(x)
        logits = model.decode(lat).double().numpy()
        kl = model.kl_divergence(lat).mean().item()
    torch.testing.assert_close(lat["z2"], q2)
    torch.testing.assert_close(lat["z1"], q1)
    p = np.clip(expit(logits), 1e-5, 1 - 1e-5)
    xd = x.double().numpy()
    nll = -(xd * np.log(p) + (1 - xd) * np.log(1 - p)).sum(1).mean()
    assert loss == pytest.approx(nll + 0.3 * kl, rel=1e-5)


def test_gated_variant_gates_every_hidden_layer(tmp_path: Path) -> None:
    _, _, _, gated = build(tmp_path, HVampGated)
    _, _, _, plain = build(tmp_path / "plain", HVamp)
    assert not any(isinstance(m, torch.nn.Tanh) for m in gated.modules())
    assert not any(isinstance(m, GatedDense) for m in plain.modules())
    # q(z2|x): 2, q(z1|x,z2): x 1 + z2 1 + joint 1, p(z1|z2): 2, p(x|z1,z2): 1 + 1 + joint 1.
    assert sum(isinstance(m, GatedDense) for m in gated.modules()) == 10
    assert sum(isinstance(m, torch.nn.Tanh) for m in plain.modules()) == 10
    layer = gated.q_z1_x
    h = torch.rand(3, gated.n_items)
    expected = layer.linear(h) * torch.sigmoid(layer.gate(h))
    torch.testing.assert_close(layer(h), expected)


@pytest.mark.parametrize(("cls", "likelihood"), [(HVamp, "bernoulli"), (HVampGated, "multinomial")])
def test_trains_and_loss_decreases(tmp_path: Path, cls: type, likelihood: str) -> None:
    _, train, _, model = build(tmp_path, cls, likelihood=likelihood, warmup=0, max_beta=0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = next(iter(train))

    def eval_nll() -> float:
        model.eval()
        with torch.no_grad():
            model.calculate_loss(batch)
        return model.last_loss_terms["nll"]

    before = eval_nll()
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert eval_nll() < before - 2.0


@pytest.mark.parametrize("cls", [HVamp, HVampGated])
def test_full_sort_predict_and_recbole_trainer(tmp_path: Path, cls: type) -> None:
    from recbole.trainer import Trainer

    config, train, valid, model = build(tmp_path, cls, epochs=1)
    best_score, _ = Trainer(config, model).fit(train, valid, show_progress=False)
    assert np.isfinite(best_score)
    model.eval()
    users = torch.tensor([2, 2, 17])
    items = torch.tensor([5, 39, 1])
    with torch.no_grad():
        scores = model.full_sort_predict({model.USER_ID: users})
        pointwise = model.predict({model.USER_ID: users, model.ITEM_ID: items})
    assert scores.shape == (3, N_ITEMS + 1) and torch.isfinite(scores).all()
    torch.testing.assert_close(pointwise, scores[torch.arange(3), items])
    torch.testing.assert_close(scores[0], scores[1])  # same user, same row
