"""Data preparation glue: training regimes, history exclusion, evaluation subsets, cache."""

from __future__ import annotations

import numpy as np
from recbole.config import Config

from recbole_ext.data import (
    HarnessSettings,
    LengthBucketedBatches,
    UserSubsetBatches,
    load_dataset,
    prepare_data,
    sequential_histories,
)
from recbole_ext.layers.contrastive import next_item_targets

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


def test_users_regime_windows_cover_every_training_target_once(tiny_sequences):
    """Each user's longest prefix, plus earlier non-overlapping windows of MAX_ITEM_LIST_LENGTH
    (4) for longer histories: together their per-position targets are the user's training
    targets (every item but the first and the two held out), each exactly once, in order."""
    config = _config(tiny_sequences, train_regime="users")
    dataset, _ = load_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    inter = train._dataset.inter_feat
    users = inter["user_id"].numpy()
    targets = next_item_targets(inter["item_id_list"], inter["item_length"], inter["item_id"])
    raw = _raw_sequences(tiny_sequences)
    covered: dict[str, list[tuple[int, str]]] = {}
    for row in range(len(users)):
        user_token = dataset.id2token("user_id", users[row])
        length = inter["item_length"][row].item()
        items = dataset.id2token("item_id", targets[row, :length].numpy())
        # A window's first target is the item after its first input item.
        first_input = dataset.id2token("item_id", inter["item_id_list"][row, 0].item())
        start = raw[user_token].index(first_input) + 1
        covered.setdefault(user_token, []).extend(enumerate(items, start))
    assert set(covered) == set(raw)
    multi_window = 0
    for user_token, items in raw.items():
        got = sorted(covered[user_token])
        assert got == list(enumerate(items[1:-2], 1)), user_token
        multi_window += len(items) - 3 > 4
    assert multi_window > 0  # the data holds histories longer than one window
    # The longest prefix is always kept.
    assert len(users) > len(set(users)) == 40


def test_bucketed_batches_cover_the_epoch_grouped_by_length_and_trimmed(tiny_sequences):
    config = _config(
        tiny_sequences,
        train_regime="users",
        MAX_ITEM_LIST_LENGTH=8,
        bucket_by_length=True,
        train_batch_size=8,
    )
    dataset, _ = load_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    assert isinstance(train, LengthBucketedBatches) and train.trim and train.per_target
    lengths = train._dataset.inter_feat["item_length"].numpy()
    budget = 8 * lengths.mean()
    epochs = []
    for _ in range(2):
        seen, order = [], []
        batches = list(train)
        assert len(batches) == len(train)
        for batch in batches:
            width = batch["item_id_list"].shape[1]
            assert width == int(batch["item_length"].max())  # padded to its own longest
            # About train_batch_size x the mean length of targets: the budget plus one window.
            assert int(batch["item_length"].sum()) <= budget + 8
            seen.extend(batch["user_id"].tolist())
            order.append(tuple(batch["item_length"].tolist()))
        assert sorted(seen) == sorted(train._dataset.inter_feat["user_id"].tolist())
        # Grouped by length: the batches' length ranges do not interleave.
        spans = sorted((min(o), max(o)) for o in order)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
        epochs.append(order)
    assert epochs[0] != epochs[1]  # batch order (and tie-breaks) reshuffled every epoch


def test_bucketed_batches_replay_from_the_generator_state(tiny_sequences):
    config = _config(tiny_sequences, bucket_by_length=True, train_batch_size=8)
    dataset, _ = load_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    assert not train.per_target  # per-prefix samples: a fixed number of rows per batch
    state = train.generator.get_state()
    first = [b.tolist() for b in train.batches()]
    assert all(len(b) == 8 for b in first[:-1]) or len(first[-1]) <= 8
    train.generator.set_state(state)
    assert [b.tolist() for b in train.batches()] == first


def test_random_batches_without_bucketing_are_still_trimmed(tiny_sequences):
    config = _config(tiny_sequences, bucket_by_length=False, train_batch_size=8)
    dataset, _ = load_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    assert isinstance(train, LengthBucketedBatches) and not train.bucket and train.trim
    widths = [b["item_id_list"].shape[1] for b in train]
    lengths = [int(b["item_length"].max()) for b in train]
    assert widths == lengths and max(widths) <= 4


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


def test_the_sample_limit_counts_targets_under_whole_sequences(tiny_sequences):
    config = _config(tiny_sequences, train_regime="users", train_sample_limit=60)
    dataset, _ = load_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    targets = train._dataset.inter_feat["item_length"].numpy()
    assert 0 < targets.sum() <= 60 < targets.sum() + targets.max()
    assert len(targets) < 60  # whole sequences, not 60 of them


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


def test_typed_settings_are_what_the_preparation_follows(tiny_sequences):
    """Given the harness's settings, prepare_data reads none of the harness keys a Config
    holds (the harness keeps them out of it); without, it reads the config's (scripts)."""
    config = _config(tiny_sequences, train_sample_limit=50, eval_user_limit=7)
    dataset, _ = load_dataset(config)
    settings = HarnessSettings(train_sample_limit=30, eval_user_limit=5)
    train, valid, _ = prepare_data(config, dataset, settings)
    assert len(train._dataset) == 30
    assert len(set(valid._dataset.inter_feat["user_id"].numpy())) == 5
    assert HarnessSettings.from_config(config).train_sample_limit == 50


def test_the_sample_limit_reaches_recboles_user_batched_autoencoders(tiny_sequences):
    """RecBole's UserDataLoader batches every user whatever the rows; with a limit the batches
    hold random users whose training interactions add up to about it."""
    config = Config(
        model="MultiVAE",
        dataset="tiny",
        config_dict={
            "data_path": str(tiny_sequences),
            "checkpoint_dir": str(tiny_sequences / "ck"),
            "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": "full"},
            "train_batch_size": 4,
            "train_sample_limit": 60,
        },
    )
    dataset, _ = load_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    assert isinstance(train, UserSubsetBatches)
    epochs = [[b["user_id"].tolist() for b in train] for _ in range(2)]
    users = sorted(u for batch in epochs[0] for u in batch)
    assert users == sorted(train.users.tolist()) and 0 not in users
    assert all(len(batch) <= 4 for batch in epochs[0]) and len(epochs[0]) == len(train)
    counts = np.bincount(train._dataset.inter_feat["user_id"].numpy())
    assert 0 < counts[users].sum() <= 60 and len(users) < 40
    assert epochs[0] != epochs[1]  # reshuffled every epoch
