"""MultVAE (Liang et al., WWW 2018) on a tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset
from recbole.utils import init_seed
from scipy.special import log_softmax

from recbole_ext.layers.vae import reparameterize
from recbole_ext.models.mult_vae import MultVAE
from tests.helpers import VAE_ITEMS, VAE_USERS, build_vae, write_taste_groups

YAML = Path(__file__).resolve().parents[2] / "configs" / "models" / "MultVAE.yaml"
N_USERS, N_ITEMS = VAE_USERS, VAE_ITEMS


def build(tmp_path: Path, **settings: Any) -> tuple[Any, Any, Any, MultVAE]:
    return build_vae(
        tmp_path,
        MultVAE,
        {"mlp_hidden_size": [16], "latent_dimension": 8, "eval_batch_size": 64},
        **settings,
    )


def training_rows_of(dataset: Any, n_items: int) -> np.ndarray:
    """Each user's training items, straight from the dataset's interactions."""
    rows = np.zeros((dataset.user_num, n_items))
    rows[dataset.inter_feat["user_id"].numpy(), dataset.inter_feat["item_id"].numpy()] = 1.0
    return rows


def test_defaults_are_the_papers(tmp_path: Path) -> None:
    write_taste_groups(tmp_path)
    config = Config(
        model=MultVAE,
        dataset="tiny",
        config_file_list=[str(YAML)],
        config_dict={"data_path": str(tmp_path)},
    )
    assert config["mlp_hidden_size"] == [600] and config["latent_dimension"] == 200
    assert (config["anneal_cap"], config["total_anneal_steps"]) == (0.2, 200000)
    assert (config["train_batch_size"], config["train_regime"]) == (500, "users")
    assert config["dropout_prob"] == 0.5 and config["learning_rate"] == 0.001


def test_loss_equals_direct_computation(tmp_path: Path) -> None:
    _, train, _, model = build(tmp_path, total_anneal_steps=4, anneal_cap=0.5)
    model.eval()  # no dropout, z = mu: the loss is a deterministic function of the weights
    users = torch.arange(1, N_USERS + 1)
    rows = training_rows_of(train._dataset, model.n_items)[users.numpy()]
    np.testing.assert_array_equal(model.history(users).numpy(), rows)

    model.anneal_step.fill_(3)  # beta = min(0.5, 3 / 4)
    loss = model.calculate_loss({model.USER_ID: users}).item()

    x = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    w = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in layers]
    h = np.tanh(x @ w[0][0].T + w[0][1]) @ w[1][0].T + w[1][1]
    mu, logvar = h[:, :8], h[:, 8:]
    logits = np.tanh(mu @ w[2][0].T + w[2][1]) @ w[3][0].T + w[3][1]
    nll = -(log_softmax(logits, axis=1) * rows).sum(1).mean()
    kl = (0.5 * (np.exp(logvar) + mu**2 - 1 - logvar)).sum(1).mean()
    assert loss == pytest.approx(nll + 0.5 * kl, rel=1e-5)
    assert model.last_loss_terms["beta"] == 0.5
    assert model.last_loss_terms["nll"] == pytest.approx(nll, rel=1e-5)
    assert model.last_loss_terms["kl"] == pytest.approx(kl, rel=1e-5)
    assert int(model.anneal_step) == 3  # evaluation calls do not advance the schedule


def test_beta_annealed_per_training_step(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path, total_anneal_steps=4, anneal_cap=0.6)
    model.train()
    batch = {model.USER_ID: torch.arange(1, 9)}
    betas = []
    for _ in range(6):
        model.calculate_loss(batch)
        betas.append(model.last_loss_terms["beta"])
    assert betas == pytest.approx([0.0, 0.25, 0.5, 0.6, 0.6, 0.6])
    assert int(model.anneal_step) == 6
    assert "anneal_step" in model.state_dict()  # a resumed checkpoint continues the schedule


def test_training_noise_is_standard_normal(tmp_path: Path) -> None:
    # The paper samples eps ~ N(0, 1) (RecBole's MultiVAE uses std 0.01): the spread of z
    # across samples must match the posterior's sigma.
    _, _, _, model = build(tmp_path, dropout_prob=0.0)
    model.train()
    x = model.history(torch.tensor([3])).repeat(4000, 1)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = reparameterize(mu, logvar, training=model.training)
    sigma = torch.exp(0.5 * logvar[0])
    torch.testing.assert_close(z.std(0), sigma, rtol=0.08, atol=0)


def test_trains_and_loss_decreases(tmp_path: Path) -> None:
    _, train, _, model = build(tmp_path, learning_rate=0.01, total_anneal_steps=0)
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
    after = eval_loss()
    assert after < before - 0.5


def test_full_sort_predict_and_predict(tmp_path: Path) -> None:
    _, _, _, model = build(tmp_path)
    model.eval()
    users = torch.tensor([1, 5, 5, 9])
    items = torch.tensor([3, 0, 7, 39])
    with torch.no_grad():
        scores = model.full_sort_predict({model.USER_ID: users})
        assert scores.shape == (4, model.n_items) == (4, N_ITEMS + 1)
        torch.testing.assert_close(scores, model.full_sort_predict({model.USER_ID: users}))
        pointwise = model.predict({model.USER_ID: users, model.ITEM_ID: items})
    torch.testing.assert_close(pointwise, scores[torch.arange(4), items])


def test_recbole_trainer_runs(tmp_path: Path) -> None:
    from recbole.trainer import Trainer

    config, train, valid, model = build(tmp_path)
    trainer = Trainer(config, model)
    best_score, best_result = trainer.fit(train, valid, saved=True, show_progress=False)
    assert np.isfinite(best_score) and set(best_result) == {"recallcap@5", "ndcg@5"}
    assert set(model.last_loss_terms) == {"nll", "kl", "beta", "l2", "total"}
    assert int(model.anneal_step) == 2 * len(train)  # one step per batch, two epochs


def test_users_regime_model_sees_full_histories(tmp_path: Path) -> None:
    from recbole_ext.data import prepare_data

    write_taste_groups(tmp_path)
    config = Config(
        model=MultVAE,
        dataset="tiny",
        config_file_list=[str(YAML)],
        config_dict={
            "data_path": str(tmp_path),
            "eval_args": {
                "split": {"RS": [0.8, 0.1, 0.1]},
                "order": "RO",
                "group_by": "user",
                "mode": "full",
            },
            "metrics": ["RecallCap"],
            "topk": [5],
            "valid_metric": "RecallCap@5",
            "train_regime": "users",
            "train_sample_limit": 0,
            "eval_user_limit": 0,
            "exclude_history_items": False,
            "mlp_hidden_size": [8],
            "latent_dimension": 4,
        },
    )
    # The training split before any regime is applied (build() can run once per dataset).

    init_seed(config["seed"], True)  # the random split must be the same in both builds
    reference, _, _ = create_dataset(config).build()
    init_seed(config["seed"], True)
    data = prepare_data(config, create_dataset(config))
    assert len(data.train) == 1  # 30 users, batches of 500 users: one batch
    assert len(data.train._dataset) == N_USERS  # one training row per user
    model = MultVAE(config, data.model_dataset)  # as bench/runner.py builds it
    users = torch.arange(1, N_USERS + 1)
    expected = training_rows_of(reference, model.n_items)[users.numpy()]
    np.testing.assert_array_equal(model.history(users).numpy(), expected)
