"""TimeWeightCF: the decay weights and the scores of a handmade example, computed directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_trainer

from recbole_ext.models.time_weight_cf import TimeWeightCF, time_weights
from tests.helpers import ROOT, write_inter

YAML = str(ROOT / "configs" / "models" / "TimeWeightCF.yaml")

# (user, item, time); each user's last two interactions are validation and test.
ROWS = [
    (1, 1, 0.0), (1, 2, 2.0), (1, 3, 4.0), (1, 4, 5.0), (1, 5, 6.0),
    (2, 1, 1.0), (2, 3, 3.0), (2, 2, 4.0), (2, 5, 5.0),
    (3, 2, 0.0), (3, 4, 2.0), (3, 2, 4.0), (3, 1, 5.0), (3, 3, 6.0),
    (4, 3, 0.0), (4, 4, 1.0), (4, 5, 2.0), (4, 1, 3.0), (4, 2, 4.0),
    (5, 6, 0.0), (5, 7, 1.0), (5, 6, 2.0), (5, 8, 3.0), (5, 6, 4.0),
]  # fmt: skip
# User 5 keeps every user short of the full catalogue (RecBole's sampler refuses such users).
# With half_life = 2, weight 2 ** -(t_now - t_ui) / 2, t_now = the user's last training time.
# User 3 saw item 2 at times 0 and 4: its latest time counts.
WEIGHTS = {
    (1, 1): 0.25, (1, 2): 0.5, (1, 3): 1.0,
    (2, 1): 0.5, (2, 3): 1.0,
    (3, 2): 1.0, (3, 4): 0.5,
    (4, 3): 0.5, (4, 4): 2 ** -0.5, (4, 5): 1.0,
    (5, 6): 1.0, (5, 7): 2 ** -0.5,
}  # fmt: skip


def _build(tmp_path: Path, **extra: object):
    write_inter(tmp_path, "twcf", ROWS)
    settings = {
        "data_path": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ck"),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "half_life": 2.0,
        "topk": [2],
        "valid_metric": "NDCG@2",
        "show_progress": False,
        "seed": 0,
        **extra,
    }
    config = Config(
        model=TimeWeightCF, dataset="twcf", config_file_list=[YAML], config_dict=settings
    )
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, valid


def _direct(dataset, k: int) -> np.ndarray:
    """Scores [user_num, item_num] from WEIGHTS and a NumPy cosine top-k, internal ids."""
    uid = {t: int(dataset.token2id(dataset.uid_field, str(t))) for t in range(1, 6)}
    iid = {t: int(dataset.token2id(dataset.iid_field, str(t))) for t in range(1, 9)}
    weighted = np.zeros((dataset.user_num, dataset.item_num))
    for (u, i), w in WEIGHTS.items():
        weighted[uid[u], iid[i]] = w
    binary = (weighted > 0).astype(float)
    norms = np.sqrt(binary.sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = binary.T @ binary / np.outer(norms, norms)
    sim = np.nan_to_num(sim)
    np.fill_diagonal(sim, 0.0)
    kept = np.zeros_like(sim)
    for j in range(sim.shape[1]):
        column = sim[:, j]
        order = np.argsort(-column, kind="stable")
        if k < len(order) - 1:
            # The example is built without ties at the cut-off, so top-k is unambiguous.
            assert column[order[k - 1]] > column[order[k]] or column[order[k - 1]] == 0
        top = order[:k]
        kept[top, j] = column[top]
    return weighted @ kept


def test_time_weights_halve_every_half_life():
    np.testing.assert_allclose(time_weights([0.0, 2.0, 4.0, 3.0], 2.0), [1, 0.5, 0.25, 2**-1.5])


def test_decayed_matrix_is_the_handmade_one(tmp_path):
    config, dataset, train, _ = _build(tmp_path)
    model = TimeWeightCF(config, train._dataset)
    got = {
        (
            int(dataset.id2token(dataset.uid_field, u)),
            int(dataset.id2token(dataset.iid_field, i)),
        ): w
        for (u, i), w in zip(model.user_index.t().tolist(), model.user_weight.tolist(), strict=True)
    }
    assert got.keys() == WEIGHTS.keys()
    for key, weight in WEIGHTS.items():
        assert got[key] == pytest.approx(weight, rel=1e-6)


@pytest.mark.parametrize("k", [100, 2])
def test_scores_equal_direct_computation(tmp_path, k):
    config, dataset, train, _ = _build(tmp_path, k=k)
    model = TimeWeightCF(config, train._dataset)
    expected = _direct(dataset, k)
    users = torch.arange(1, dataset.user_num)
    scores = model.full_sort_predict(Interaction({"user_id": users}))
    assert scores.shape == (dataset.user_num - 1, dataset.item_num)
    np.testing.assert_allclose(scores.numpy(), expected[1:], rtol=1e-5, atol=1e-7)
    items = torch.tensor([1, 2, 3, 4, 5])
    pointwise = model.predict(Interaction({"user_id": users[[0, 1, 2, 3, 0]], "item_id": items}))
    np.testing.assert_allclose(
        pointwise.numpy(), expected[[1, 2, 3, 4, 1], [1, 2, 3, 4, 5]], rtol=1e-5
    )


def test_hand_checked_score(tmp_path):
    # User 2 (items 1 and 3), candidate 2 with k = 100. Training sets: item 1 {u1, u2},
    # item 2 {u1, u3}, item 3 {u1, u2, u4}. cos(1, 2) = 1 / 2, cos(3, 2) = 1 / sqrt(6).
    # s = f(item 1) * 1/2 + f(item 3) / sqrt(6) = 0.5 * 0.5 + 1 / sqrt(6).
    config, dataset, train, _ = _build(tmp_path, k=100)
    model = TimeWeightCF(config, train._dataset)
    u2 = int(dataset.token2id(dataset.uid_field, "2"))
    i2 = int(dataset.token2id(dataset.iid_field, "2"))
    score = model.predict(
        Interaction({"user_id": torch.tensor([u2]), "item_id": torch.tensor([i2])})
    )
    assert float(score[0]) == pytest.approx(0.25 + 1 / np.sqrt(6), rel=1e-6)


def test_traditional_trainer_runs(tmp_path):
    config, dataset, train, valid = _build(tmp_path)
    model = TimeWeightCF(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert type(trainer).__name__ == "TraditionalTrainer"
    _, result = trainer.fit(train, valid, saved=True)
    assert np.isfinite(result["ndcg@2"])
    # The checkpoint (buffers included) reloads with weights_only and evaluates the same.
    reloaded = trainer.evaluate(valid, load_best_model=True)
    assert reloaded["ndcg@2"] == pytest.approx(result["ndcg@2"])


def test_decayed_rows_in_any_order_with_repeats_and_empty_users(tmp_path):
    config, dataset, train, _ = _build(tmp_path)
    model = TimeWeightCF(config, train._dataset)
    dense = torch.sparse_coo_tensor(
        model.user_index, model.user_weight, (dataset.user_num, dataset.item_num)
    ).to_dense()
    users = torch.tensor([3, 0, 1, 3, dataset.user_num - 1])  # 0: the padding user, no items
    torch.testing.assert_close(model._decayed_rows(users), dense[users])
    assert model._decayed_rows(users)[1].abs().sum() == 0
