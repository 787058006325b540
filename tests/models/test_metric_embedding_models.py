"""PRME and FME: scores and loss equal a direct computation from the embedding tables; training
runs. The two metric-embedding models differ only in their score, so one module tests both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_trainer

from recbole_ext.models.fme import FME
from recbole_ext.models.prme import PRME
from tests.helpers import ROOT, write_inter

ALPHA = 0.3


def _prme_score(pref_user, pref_item, seq_last, seq_item):
    """-(alpha ||U_u - XP_i||^2 + (1 - alpha) ||XS_last - XS_i||^2)"""
    pref = np.sum((pref_user - pref_item) ** 2)
    seq = np.sum((seq_last - seq_item) ** 2)
    return -(ALPHA * pref + (1 - ALPHA) * seq)


def _fme_score(pref_user, pref_item, seq_last, seq_item):
    """alpha <U_u, V_i> - (1 - alpha) ||X_last - X_i||^2"""
    return ALPHA * np.dot(pref_user, pref_item) - (1 - ALPHA) * np.sum((seq_last - seq_item) ** 2)


# model class, name of its item-to-item table, direct score of one (user, last item, item)
MODELS = {
    "PRME": (PRME, "item_seq_embedding", _prme_score),
    "FME": (FME, "item_trans_embedding", _fme_score),
}


@pytest.fixture(params=sorted(MODELS))
def setup(tmp_path: Path, request):
    model_class = MODELS[request.param][0]
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 21):
        items = rng.choice(np.arange(1, 16), size=8, replace=False)
        rows += [(user, int(i), float(t)) for t, i in enumerate(items)]
    write_inter(tmp_path, "tiny", rows)
    config = Config(
        model=model_class,
        dataset="tiny",
        config_file_list=[str(ROOT / "configs" / "models" / f"{request.param}.yaml")],
        config_dict={
            "data_path": str(tmp_path),
            "checkpoint_dir": str(tmp_path / "ck"),
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": 5,
            "embedding_size": 8,
            "alpha": ALPHA,
            "reg_weight": 0.05,
            "learning_rate": 0.01,
            "train_batch_size": 32,
            "epochs": 1,
            "topk": [5],
            "valid_metric": "NDCG@5",
            "show_progress": False,
            "seed": 0,
        },
    )
    dataset = create_dataset(config)
    train, valid, _ = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = model_class(config, train._dataset)
    return config, dataset, model, train, valid


def _tables(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sequential_table = getattr(model, MODELS[type(model).__name__][1])
    return (
        model.user_embedding.weight.detach().double().numpy(),
        model.item_pref_embedding.weight.detach().double().numpy(),
        sequential_table.weight.detach().double().numpy(),
    )


def _direct_scores(model, interaction) -> np.ndarray:
    """The model's score for every row and item, one (user, item) pair at a time."""
    score = MODELS[type(model).__name__][2]
    U, XP, XS = _tables(model)
    users = interaction["user_id"].numpy()
    lengths = interaction["item_length"].numpy()
    last = interaction["item_id_list"].numpy()[np.arange(len(users)), lengths - 1]
    scores = np.zeros((len(users), XP.shape[0]))
    for b, (u, lst) in enumerate(zip(users, last, strict=True)):
        for i in range(XP.shape[0]):
            scores[b, i] = score(U[u], XP[i], XS[lst], XS[i])
    return scores


def _first_batch(train):
    return next(iter(train))


def test_training_steps_are_finite_and_reduce_the_loss(setup):
    _, _, model, train, _ = setup
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    batch = _first_batch(train)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0]


def test_scores_equal_direct_computation(setup):
    _, dataset, model, train, _ = setup
    # A few steps first, so that the tables are no longer their initial values.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for step, batch in enumerate(train):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
        if step == 2:
            break
    batch = _first_batch(train)
    expected = _direct_scores(model, batch)
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        assert full.shape == (len(batch), dataset.item_num)
        np.testing.assert_allclose(full.numpy(), expected, rtol=1e-4, atol=1e-5)
        items = batch["item_id"].numpy()
        pointwise = model.predict(batch).numpy()
    np.testing.assert_allclose(pointwise, expected[np.arange(len(items)), items], rtol=1e-5)


def test_loss_equals_bpr_plus_l2(setup):
    config, _, model, train, _ = setup
    batch = _first_batch(train)
    U, XP, XS = _tables(model)
    expected_scores = _direct_scores(model, batch)
    rows = np.arange(len(batch))
    pos, neg = batch["item_id"].numpy(), batch["neg_item_id"].numpy()
    users = batch["user_id"].numpy()
    last = batch["item_id_list"].numpy()[rows, batch["item_length"].numpy() - 1]
    diff = expected_scores[rows, pos] - expected_scores[rows, neg]
    bpr = np.mean(np.log1p(np.exp(-diff)))
    reg = np.mean(
        (U[users] ** 2).sum(1)
        + (XP[pos] ** 2).sum(1)
        + (XP[neg] ** 2).sum(1)
        + (XS[last] ** 2).sum(1)
        + (XS[pos] ** 2).sum(1)
        + (XS[neg] ** 2).sum(1)
    )
    loss = float(model.calculate_loss(batch))
    assert loss == pytest.approx(bpr + config["reg_weight"] * reg, rel=1e-5)


def test_recbole_trainer_runs_an_epoch(setup):
    config, _, model, train, valid = setup
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    _, result = trainer.fit(train, valid, saved=True)
    assert np.isfinite(result["ndcg@5"])
    # The checkpoint (buffers included) reloads with weights_only and evaluates the same.
    reloaded = trainer.evaluate(valid, load_best_model=True)
    assert reloaded["ndcg@5"] == pytest.approx(result["ndcg@5"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
