"""Strong generalization: whole users held out, 80/20 fold-in, fold-in excluded from ranking."""

from __future__ import annotations

import numpy as np
import pytest
from recbole.config import Config

from bench import api
from recbole_ext.data import HeldOut, load_dataset, prepare_data, strong_generalization_split
from tests.helpers import write_inter

HELDOUT = {"valid": 10, "test": 12, "fold_in": 0.8, "seed": 3}


@pytest.fixture
def users_items(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for user in range(1, 81):
        items = rng.choice(np.arange(1, 41), size=rng.integers(6, 16), replace=False)
        rows += [(user, int(i), float(t)) for t, i in enumerate(items)]
    write_inter(tmp_path, "sg", rows)
    return tmp_path


def _config(path, model="EASE", **extra):
    settings = {
        "data_path": str(path),
        "checkpoint_dir": str(path / "ck"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "mode": "full"},
        "heldout_users": HELDOUT,
        "train_regime": "interactions",
        "train_sample_limit": 0,
        "eval_user_limit": 0,
        "exclude_history_items": False,
        "train_neg_sample_args": None,
        **extra,
    }
    return Config(model=model, dataset="sg", config_dict=settings)


def _pairs(ds):
    inter = ds.inter_feat
    return set(zip(inter["user_id"].tolist(), inter["item_id"].tolist(), strict=True))


def test_split_invariants(users_items):
    dataset, _ = load_dataset(_config(users_items))
    train, history, valid, test = strong_generalization_split(dataset, HeldOut(**HELDOUT))
    train_users = set(train.inter_feat["user_id"].tolist())
    valid_users = set(valid.inter_feat["user_id"].tolist())
    test_users = set(test.inter_feat["user_id"].tolist())
    assert len(valid_users) == 10 and len(test_users) == 12
    assert not (train_users & valid_users) and not (train_users & test_users)
    assert not (valid_users & test_users)
    assert len(train_users) == 80 - 22
    train_items = set(train.inter_feat["item_id"].tolist())
    fold_in = _pairs(history) - _pairs(train)
    for user in valid_users | test_users:
        mine = {i for u, i in fold_in if u == user}
        target = {i for u, i in _pairs(valid) | _pairs(test) if u == user}
        assert not (mine & target)
        total = len(mine) + len(target)
        assert len(mine) == int(np.ceil(0.8 * total))  # 80% fold-in (all items known here)
        assert (mine | target) <= train_items


def test_fold_in_items_are_excluded_from_the_ranking(users_items):
    config = _config(users_items)
    dataset, _ = load_dataset(config)
    data = prepare_data(config, dataset)
    history = _pairs(data.fold_in) - _pairs(data.train._dataset)
    interaction, history_index, positive_u, positive_i = next(iter(data.test))
    users = interaction["user_id"].tolist()
    excluded = set(
        zip([users[r] for r in history_index[0].tolist()], history_index[1].tolist(), strict=True)
    )
    for user in users:
        assert {i for u, i in history if u == user} == {i for u, i in excluded if u == user}
    assert len(set(positive_u.tolist())) == len(users)


@pytest.mark.parametrize("model", ["EASE", "MultVAE"])
def test_models_encode_held_out_users_through_bench_run(users_items, model):
    summary = api.run(
        [model],
        "sg",
        data_dir=users_items,
        out=users_items / "out",
        epochs=1,
        settings={
            "heldout_users": HELDOUT,
            "metrics": ["Recall", "RecallCap", "NDCG"],
            "topk": [5, 10],
            "valid_metric": "NDCG@10",
        },
    )
    result = summary.results[0]
    assert result.ok, result.error
    assert result.data.test_users == 12 and result.data.valid_users == 10
    assert result.test["ndcg@10"] > 0  # held-out users were encoded from their fold-in
    assert result.test["recallcap@10"] >= result.test["recall@10"]
    assert result.config["heldout_users"] == HELDOUT  # recorded as asked


def test_sequential_models_are_refused(users_items):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="needs a general model"):
        api.run(
            ["SASRec"],
            "sg",
            data_dir=users_items,
            out=users_items / "o",
            settings={"heldout_users": HELDOUT},
        )


def test_paper_recipe_on_generated_ratings(tmp_path):
    # The ml-20m config's recipe (ratings > 3.5, users with >= 5) on small generated data.
    rng = np.random.default_rng(2)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    kept: dict[int, int] = {}
    for user in range(1, 101):
        for t, item in enumerate(rng.choice(np.arange(1, 301), size=14, replace=False)):
            rating = float(rng.choice([1, 2, 3, 3.5, 4, 5], p=[0.1, 0.1, 0.1, 0.1, 0.3, 0.3]))
            lines.append(f"{user}\t{item}\t{rating}\t{t}")
            kept[user] = kept.get(user, 0) + (rating > 3.5)
    (tmp_path / "ml-20m").mkdir()
    (tmp_path / "ml-20m" / "ml-20m.inter").write_text("\n".join(lines) + "\n")
    summary = api.run(
        ["EASE"],
        "ml-20m",
        data_dir=tmp_path,
        out=tmp_path / "out",
        settings={"heldout_users": {"valid": 5, "test": 5, "fold_in": 0.8, "seed": 0}},
    )
    result = summary.results[0]
    assert result.ok, result.error
    assert result.data.interactions == sum(n for n in kept.values() if n >= 5)
    assert result.data.users == sum(1 for n in kept.values() if n >= 5)
    assert {"recall@20", "recallcap@20", "ndcg@100"} <= set(result.test)
