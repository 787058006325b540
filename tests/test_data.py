"""Data preparation glue: training regimes, history exclusion, evaluation subsets, cache."""

from __future__ import annotations

import numpy as np
from recbole.config import Config

from recbole_ext.data import load_dataset, prepare_data, sequential_histories

PROTOCOL = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "MAX_ITEM_LIST_LENGTH": 4,
    "train_neg_sample_args": None,
    "loss_type": "CE",
    "train_regime": "interactions",
    "train_sample_limit": 0,
    "eval_user_limit": 0,
    "exclude_history_items": False,
}


def _config(path, **extra):
    settings = {**PROTOCOL, "data_path": str(path), "checkpoint_dir": str(path / "ck"), **extra}
    return Config(model="SASRec", dataset="tiny", config_dict=settings)


def _raw_sequences(path):
    rows = [
        line.split("\t") for line in (path / "tiny" / "tiny.inter").read_text().splitlines()[1:]
    ]
    sequences: dict[str, list[str]] = {}
    for user, item, _ in sorted(rows, key=lambda r: (int(r[0]), float(r[2]))):
        sequences.setdefault(user, []).append(item)
    return sequences


def test_users_regime_keeps_each_users_longest_history(tiny_sequences):
    config = _config(tiny_sequences, train_regime="users")
    dataset, _ = load_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    inter = train._dataset.inter_feat
    users = inter["user_id"].numpy()
    assert len(users) == len(set(users)) == 40
    raw = _raw_sequences(tiny_sequences)
    for row in range(len(users)):
        user_token = dataset.id2token("user_id", users[row])
        target = dataset.id2token("item_id", inter["item_id"][row].item())
        # The training target of the longest sample is the third-last item (LOO keeps 2 back).
        assert target == raw[user_token][-3]
        assert inter["item_length"][row].item() == min(len(raw[user_token]) - 3, 4)


def test_history_matrices_hold_everything_before_each_target(tiny_sequences):
    config = _config(tiny_sequences)
    dataset, _ = load_dataset(config)
    train_ds, valid_ds, _ = dataset.build()
    before_valid, before_test = sequential_histories(train_ds, valid_ds)
    raw = _raw_sequences(tiny_sequences)
    for user_token, items in raw.items():
        uid = dataset.token2id("user_id", user_token)
        expected_valid = sorted(dataset.token2id("item_id", i) for i in items[:-2])
        expected_test = sorted(dataset.token2id("item_id", i) for i in items[:-1])
        assert sorted(before_valid[uid].indices) == expected_valid
        assert sorted(before_test[uid].indices) == expected_test


def test_excluded_history_reaches_the_evaluation_batches(tiny_sequences):
    config = _config(tiny_sequences, exclude_history_items=True)
    dataset, _ = load_dataset(config)
    _, _, test = prepare_data(config, dataset)
    raw = _raw_sequences(tiny_sequences)
    interaction, (rows, cols), _, _ = next(iter(test))
    for r in range(len(interaction)):
        user_token = dataset.id2token("user_id", interaction["user_id"][r].item())
        masked = sorted(cols[rows == r].tolist())
        assert masked == sorted(dataset.token2id("item_id", i) for i in raw[user_token][:-1])


def test_limits_subsample_training_and_evaluation(tiny_sequences):
    config = _config(tiny_sequences, train_sample_limit=50, eval_user_limit=7)
    dataset, _ = load_dataset(config)
    train, valid, test = prepare_data(config, dataset)
    assert len(train._dataset) == 50
    valid_users = set(valid._dataset.inter_feat["user_id"].numpy())
    assert len(valid_users) == 7
    assert valid_users == set(test._dataset.inter_feat["user_id"].numpy())


def test_dataset_cache_is_reused_and_keyed_by_config(tiny_sequences):
    cache = tiny_sequences / "cache"
    first, cached = load_dataset(_config(tiny_sequences), cache)
    assert not cached
    second, cached = load_dataset(_config(tiny_sequences), cache)
    assert cached and second.inter_num == first.inter_num
    _, cached = load_dataset(_config(tiny_sequences, MAX_ITEM_LIST_LENGTH=3), cache)
    assert not cached
    assert len(list(cache.glob("*.pkl"))) == 2
    assert np.array_equal(first.inter_feat["item_id"].values, second.inter_feat["item_id"].values)
