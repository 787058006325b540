"""Vamp (Kim & Suh, RecSys 2019: VAE with a VampPrior) on a tiny synthetic dataset."""

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

from recbole_ext.models.vamp import Vamp
from tests.helpers import VAE_ITEMS, VAE_USERS, build_vae

YAML = Path(__file__).resolve().parents[2] / "configs" / "models" / "Vamp.yaml"
N_USERS, N_ITEMS = VAE_USERS, VAE_ITEMS


def build(tmp_path: Path, **settings: Any) -> tuple[Any, Any, Any, Vamp]:
    return build_vae(
        tmp_path, Vamp, {"hidden_size": 16, "z1_size": 8, "number_components": 6}, **settings
    )


def numpy_params(module: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    return module.weight.detach().double().numpy(), module.bias.detach().double().numpy()


def test_defaults_are_evcfs() -> None:
    d = yaml.safe_load(YAML.read_text())
    assert (d["hidden_size"], d["z1_size"], d["num_layers"]) == (600, 200, 1)
    assert (d["number_components"], d["pseudoinputs_mean"], d["pseudoinputs_std"]) == (
        1000,
        0.05,
        0.01,
    )
    assert (d["train_batch_size"], d["learning_rate"], d["warmup"]) == (200, 0.0005, 100)
    assert d["likelihood"] == "bernoulli" and d["normalize_gradients"] is True
    assert (d["train_regime"], d["epochs"], d["stopping_step"]) == ("users", 400, 50)


def test_vamp_prior_is_the_mixture_of_encoded_pseudo_inputs(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path)
    model.eval()
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 8))
    got = model.log_prior(torch.tensor(z, dtype=torch.float32)).detach().double().numpy()

    # Direct: u_k = clip(W e_k, 0, 1), encoded by tanh layer + heads, logvar clipped to [-12, 4].
    u = np.clip(model.pseudo_inputs.weight.detach().double().numpy().T, 0, 1)  # [K, I]
    w1, b1 = numpy_params(model.q_z_layers[0][0])
    h = np.tanh(u @ w1.T + b1)
    wm, bm = numpy_params(model.q_z_mean)
    wv, bv = numpy_params(model.q_z_logvar)
    means, logvars = h @ wm.T + bm, np.clip(h @ wv.T + bv, -12, 4)
    comp = np.stack(
        [norm.logpdf(z, means[k], np.exp(0.5 * logvars[k])).sum(1) for k in range(6)], axis=1
    )
    np.testing.assert_allclose(got, logsumexp(comp, axis=1) - math.log(6), rtol=1e-5)


def test_loss_is_bernoulli_nll_plus_beta_kl_at_the_sample(tmp_path: Path) -> None:
    _, train, _, model = build(tmp_path, warmup=4, max_beta=0.8)
    model.eval()
    model.set_epoch(2)  # beta = 0.8 * 2 / 4
    users = torch.arange(1, N_USERS + 1)
    loss = model.calculate_loss({model.USER_ID: users}).item()

    inter = train._dataset.inter_feat
    rows = np.zeros((train._dataset.user_num, model.n_items))
    rows[inter["user_id"].numpy(), inter["item_id"].numpy()] = 1.0
    x = rows[users.numpy()]
    with torch.no_grad():
        lat = model.latents(torch.tensor(x, dtype=torch.float32))
        logits = model.decode(lat).double().numpy()
        log_p = model.log_prior(lat["z1"]).double().numpy()
    z, mu, logvar = (lat[k].double().numpy() for k in ("z1", "q1", "q1_lv"))
    np.testing.assert_array_equal(z, mu)  # z = mu outside training
    p = np.clip(expit(logits), 1e-5, 1 - 1e-5)
    nll = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1).mean()
    kl = (norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(1) - log_p).mean()
    assert model.last_loss_terms["beta"] == pytest.approx(0.4)
    assert model.last_loss_terms["nll"] == pytest.approx(nll, rel=1e-5)
    assert model.last_loss_terms["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-4)
    assert loss == pytest.approx(nll + 0.4 * kl, rel=1e-5)


def test_kl_estimate_on_fixed_tensors(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path)
    model.eval()
    g = torch.Generator().manual_seed(1)
    lat = {k: torch.randn(4, 8, generator=g) for k in ("z1", "q1", "q1_lv")}
    with torch.no_grad():
        got = model.kl_divergence(lat).double().numpy()
        means, logvars = (t.double().numpy() for t in model.prior_components())
    z, mu, lv = (lat[k].double().numpy() for k in ("z1", "q1", "q1_lv"))
    comp = np.stack(
        [norm.logpdf(z, means[k], np.exp(0.5 * logvars[k])).sum(1) for k in range(6)], axis=1
    )
    expected = norm.logpdf(z, mu, np.exp(0.5 * lv)).sum(1) - (logsumexp(comp, 1) - math.log(6))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_beta_warmup_per_epoch_through_recbole_trainer(tmp_path: Path) -> None:
    from recbole.trainer import Trainer

    config, train, valid, model = build(tmp_path, warmup=4, max_beta=0.8, epochs=3)
    seen: list[tuple[int, float]] = []
    original = model.calculate_loss

    def recording(interaction: Any) -> torch.Tensor:
        loss = original(interaction)
        seen.append((int(model.last_loss_terms["epoch"]), model.last_loss_terms["beta"]))
        return loss

    model.calculate_loss = recording
    Trainer(config, model).fit(train, valid, show_progress=False)
    steps = len(train)
    assert steps > 1  # several batches an epoch: beta must not move within an epoch
    expected = [(e, 0.8 * e / 4) for e in (1, 2, 3) for _ in range(steps)]
    assert [s[0] for s in seen] == [e for e, _ in expected]
    assert [s[1] for s in seen] == pytest.approx([b for _, b in expected])
    assert int(model.epochs_started) == 3


def test_beta_reaches_cap_and_stays() -> None:
    from recbole_ext.layers.vae import warmup_beta

    assert [warmup_beta(e, 3, 0.5) for e in range(1, 6)] == pytest.approx(
        [0.5 / 3, 1 / 3, 0.5, 0.5, 0.5]
    )


def test_logvar_is_clipped(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path)
    model.eval()
    with torch.no_grad():
        model.q_z_logvar.bias.fill_(100.0)
        _, high = model.q_z(torch.rand(3, model.n_items))
        model.q_z_logvar.bias.fill_(-100.0)
        _, low = model.q_z(torch.rand(3, model.n_items))
    assert torch.all(high == 4.0) and torch.all(low == -12.0)


def test_gradients_are_normalised_per_tensor(tmp_path: Path) -> None:
    _, train, _, model = build(tmp_path, normalize_gradients=False)
    model.train()
    batch = next(iter(train))
    torch.manual_seed(5)
    model.calculate_loss(batch).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.normalize_gradients = True  # the hooks are attached on the next calculate_loss
    torch.manual_seed(5)
    model.calculate_loss(batch).backward()
    for g, p in zip(raw, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g / (g.norm() + 1e-7))
        assert p.grad.norm().item() == pytest.approx(1.0, abs=1e-3)


def test_pseudo_input_dropout_option(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path, pseudo_input_dropout=False)
    model.train()
    a, b = model.prior_components(), model.prior_components()
    torch.testing.assert_close(a, b)  # no dropout on the pseudo-inputs
    model.pseudo_input_dropout = True
    torch.manual_seed(0)
    c = model.prior_components()
    assert not torch.allclose(c[0], a[0])  # EVCF's behaviour: the encoder's dropout applies


@pytest.mark.parametrize("likelihood", ["bernoulli", "multinomial"])
def test_trains_and_loss_decreases(tmp_path: Path, likelihood: str) -> None:
    _, train, _, model = build(tmp_path, likelihood=likelihood, warmup=0, max_beta=0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    users = {model.USER_ID: torch.arange(1, N_USERS + 1)}

    def eval_nll() -> float:
        model.eval()
        with torch.no_grad():
            model.calculate_loss(users)
        return model.last_loss_terms["nll"]

    before = eval_nll()
    model.train()
    for interaction in list(train)[:1] * 40:
        optimizer.zero_grad()
        loss = model.calculate_loss(interaction)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert eval_nll() < before - 1.0


def test_full_sort_predict_and_predict(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path)
    model.eval()
    users = torch.tensor([1, 4, 4, 30])
    items = torch.tensor([3, 0, 9, 40])
    with torch.no_grad():
        scores = model.full_sort_predict({model.USER_ID: users})
        torch.testing.assert_close(scores, model.full_sort_predict({model.USER_ID: users}))
        pointwise = model.predict({model.USER_ID: users, model.ITEM_ID: items})
    assert scores.shape == (4, N_ITEMS + 1)
    torch.testing.assert_close(pointwise, scores[torch.arange(4), items])
