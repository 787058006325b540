"""MultDAE (Liang et al., WWW 2018) on a tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy.special import log_softmax

from recbole_ext.models.mult_dae import MultDAE
from tests.helpers import VAE_ITEMS, VAE_USERS, build_vae

YAML = Path(__file__).resolve().parents[2] / "configs" / "models" / "MultDAE.yaml"
N_USERS, N_ITEMS = VAE_USERS, VAE_ITEMS


def build(tmp_path: Path, **settings: Any) -> tuple[Any, Any, Any, MultDAE]:
    return build_vae(tmp_path, MultDAE, {"latent_dimension": 12}, **settings)


def test_architecture_and_defaults(tmp_path: Path) -> None:
    config, _, _, model = build(tmp_path, latent_dimension=200)
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert shapes == [(200, N_ITEMS + 1), (N_ITEMS + 1, 200)]  # [I -> 200 -> I]
    defaults = yaml.safe_load(YAML.read_text())
    assert defaults["l2_lambda"] == 0.01 and defaults["dropout_prob"] == 0.5
    assert (defaults["train_batch_size"], defaults["train_regime"]) == (500, "users")
    assert config["l2_lambda"] == 0.01


def test_l2_penalty_is_vae_cfs_lam_over_the_batch_size(tmp_path: Path) -> None:
    # vae_cf: MultiDAE(lam=0.01 / 500) adds 2 * l2_regularizer(lam) = 2e-5 * sum(W^2).
    config, train, _, model = build(tmp_path, train_batch_size=500)
    assert (config["l2_lambda"], config["train_batch_size"]) == (0.01, 500)  # the YAML's lam
    squares = sum(
        m.weight.detach().double().pow(2).sum().item()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    )
    assert model.l2_penalty().item() == pytest.approx(2e-5 * squares, rel=1e-6)

    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        loss = model.calculate_loss(batch).item()
    assert model.last_loss_terms["l2"] == pytest.approx(2e-5 * squares, rel=1e-6)
    assert loss == pytest.approx(model.last_loss_terms["nll"] + 2e-5 * squares, rel=1e-6)


def test_loss_equals_direct_computation(tmp_path: Path) -> None:
    config, train, _, model = build(tmp_path, l2_lambda=0.05)
    assert config["train_batch_size"] == 16  # the tiny protocol's: the penalty is 0.05 / 16
    model.eval()
    users = torch.arange(1, N_USERS + 1)
    inter = train._dataset.inter_feat
    all_rows = np.zeros((train._dataset.user_num, model.n_items))
    all_rows[inter["user_id"].numpy(), inter["item_id"].numpy()] = 1.0
    rows = all_rows[users.numpy()]
    loss = model.calculate_loss({model.USER_ID: users}).item()

    (w1, b1), (w2, b2) = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    x = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    logits = np.tanh(x @ w1.T + b1) @ w2.T + b2
    nll = -(log_softmax(logits, axis=1) * rows).sum(1).mean()
    l2 = 0.05 / 16 * ((w1**2).sum() + (w2**2).sum())  # weights only, biases excluded
    assert loss == pytest.approx(nll + l2, rel=1e-5)
    assert model.last_loss_terms["l2"] == pytest.approx(l2, rel=1e-5)


def test_trains_and_loss_decreases(tmp_path: Path) -> None:
    _, train, _, model = build(tmp_path)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    users = {model.USER_ID: torch.arange(1, N_USERS + 1)}

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model.calculate_loss(users).item()

    before = eval_loss()
    model.train()
    for interaction in list(train)[:1] * 25:
        optimizer.zero_grad()
        loss = model.calculate_loss(interaction)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert eval_loss() < before - 0.5


def test_full_sort_predict_and_predict(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path)
    model.eval()
    users = torch.tensor([2, 7, 7])
    items = torch.tensor([1, 20, 40])
    with torch.no_grad():
        scores = model.full_sort_predict({model.USER_ID: users})
        pointwise = model.predict({model.USER_ID: users, model.ITEM_ID: items})
    assert scores.shape == (3, N_ITEMS + 1)
    torch.testing.assert_close(pointwise, scores[torch.arange(3), items])


def test_recbole_trainer_runs(tmp_path: Path) -> None:
    from recbole.trainer import Trainer

    config, train, valid, model = build(tmp_path)
    best_score, best_result = Trainer(config, model).fit(train, valid, show_progress=False)
    assert np.isfinite(best_score) and set(best_result) == {"recallcap@5", "ndcg@5"}
