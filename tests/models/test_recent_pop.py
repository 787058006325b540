"""RecentPop: weighted window counts of a handmade example, with the windows written by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_trainer

from recbole_ext.models.recent_pop import RecentPop, window_index, window_weights
from tests.helpers import ROOT, write_inter

YAML = str(ROOT / "configs" / "models" / "RecentPop.yaml")

# Training interactions (item, time): the training span is [0, 9].
TRAIN = {
    1: [(1, 0.0), (2, 4.0), (3, 9.0)],
    2: [(2, 2.0), (1, 7.0), (1, 8.0)],
    3: [(3, 3.0), (4, 5.0), (3, 6.0)],
    4: [(5, 1.0), (2, 8.0)],
    5: [(6, 4.0)],  # item 6 keeps user 1 short of the full catalogue (RecBole's sampler needs it)
}
# Each user's validation and test interactions come later and are never counted.
HELD_OUT = {1: [(4, 10.0), (5, 11.0)], 2: [(5, 12.0), (4, 13.0)], 3: [(1, 14.0), (2, 15.0)],
            4: [(3, 16.0), (1, 17.0)], 5: [(6, 18.0), (6, 19.0)]}  # fmt: skip
# Three even windows of length 3 back from t = 9: (6, 9] -> 0, (3, 6] -> 1, [0, 3] -> 2.
THREE_WINDOWS = {0: 2, 1: 2, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1, 7: 0, 8: 0, 9: 0}
# Windows of length 4 back from t = 9: (5, 9] -> 0, (1, 5] -> 1, [0, 1] -> 2.
LENGTH_FOUR = {0: 2, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1, 6: 0, 7: 0, 8: 0, 9: 0}


def _build(tmp_path: Path, **extra: object):
    rows = [(u, i, t) for u in TRAIN for i, t in TRAIN[u] + HELD_OUT[u]]
    write_inter(tmp_path, "rp", rows)
    settings = {
        "data_path": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ck"),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "topk": [2],
        "valid_metric": "NDCG@2",
        "show_progress": False,
        "seed": 0,
        **extra,
    }
    config = Config(model=RecentPop, dataset="rp", config_file_list=[YAML], config_dict=settings)
    dataset = create_dataset(config)
    train, valid, _ = data_preparation(config, dataset)
    return config, dataset, train, valid


def _direct(dataset, windows: dict[int, int], weight_of: list[float]) -> np.ndarray:
    scores = np.zeros(dataset.item_num)
    for interactions in TRAIN.values():
        for item, time in interactions:
            scores[int(dataset.token2id(dataset.iid_field, str(item)))] += weight_of[
                windows[int(time)]
            ]
    return scores


@pytest.mark.parametrize(
    ("settings", "windows", "weights"),
    [
        ({}, THREE_WINDOWS, [1.0, 0.5, 0.25]),  # the defaults but 3 windows
        ({"window_weighting": "linear"}, THREE_WINDOWS, [1.0, 2 / 3, 1 / 3]),
        ({"decay_rate": 0.8}, THREE_WINDOWS, [1.0, 0.8, 0.64]),
        ({"window_length": 4.0, "n_windows": 50}, LENGTH_FOUR, [1.0, 0.5, 0.25]),
    ],
)
def test_weighted_counts_equal_direct_computation(tmp_path, settings, windows, weights):
    config, dataset, train, _ = _build(tmp_path, **{"n_windows": 3, **settings})
    model = RecentPop(config, train._dataset)
    expected = _direct(dataset, windows, weights)
    users = torch.tensor([1, 2, 3])
    scores = model.full_sort_predict(Interaction({"user_id": users}))
    assert scores.shape == (3, dataset.item_num)
    for row in scores.numpy():
        np.testing.assert_allclose(row, expected, rtol=1e-6)
    items = torch.arange(dataset.item_num)
    pointwise = model.predict(Interaction({"user_id": torch.ones_like(items), "item_id": items}))
    np.testing.assert_allclose(pointwise.numpy(), expected, rtol=1e-6)


def test_hand_computed_default_scores(tmp_path):
    # Item 1: t = 0 (window 2), 7 and 8 (window 0): 0.25 + 1 + 1; item 4: t = 5 (window 1): 0.5.
    config, dataset, train, _ = _build(tmp_path, n_windows=3)
    model = RecentPop(config, train._dataset)
    score = dict(zip(range(dataset.item_num), model.item_score.tolist(), strict=True))
    assert score[int(dataset.token2id(dataset.iid_field, "1"))] == pytest.approx(2.25)
    assert score[int(dataset.token2id(dataset.iid_field, "4"))] == pytest.approx(0.5)


def test_window_helpers():
    index, count = window_index(np.array([0.0, 3.0, 3.5, 9.0]), n_windows=3)
    assert count == 3 and index.tolist() == [2, 2, 1, 0]
    index, count = window_index(np.array([0.0, 5.0, 9.0]), window_length=4.0)
    assert count == 3 and index.tolist() == [2, 1, 0]
    np.testing.assert_allclose(window_weights(4, "linear", 0.5), [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(window_weights(3, "exponential", 0.5), [1.0, 0.5, 0.25])


def test_traditional_trainer_runs(tmp_path):
    config, _, train, valid = _build(tmp_path)
    model = RecentPop(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert type(trainer).__name__ == "TraditionalTrainer"
    _, result = trainer.fit(train, valid, saved=True)
    assert np.isfinite(result["ndcg@2"])
    # The checkpoint (buffers included) reloads with weights_only and evaluates the same.
    reloaded = trainer.evaluate(valid, load_best_model=True)
    assert reloaded["ndcg@2"] == pytest.approx(result["ndcg@2"])
