"""Pop (recbole_ext/models/pop.py): RecBole's popularity baseline, counting every interaction."""

from __future__ import annotations

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset
from recbole.model.general_recommender.pop import Pop as RecBolePop

from recbole_ext import registry
from recbole_ext.data import prepare_data
from recbole_ext.models.pop import Pop


def _config(path, batch_size: int) -> Config:
    settings = {
        "data_path": str(path),
        "checkpoint_dir": str(path / "ck"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "train_neg_sample_args": None,
        "train_batch_size": batch_size,
    }
    return Config(model=Pop, dataset="tiny", config_dict=settings)


def _counts(model_class: type, config: Config, train) -> torch.Tensor:
    model = model_class(config, train._dataset)
    for batch in train:
        model.calculate_loss(batch)
    return model.item_cnt.squeeze(1), model


@pytest.mark.parametrize("batch_size", [3, 4096])
def test_counts_every_interaction_whatever_the_batches(tiny_sequences, batch_size):
    config = _config(tiny_sequences, batch_size)
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    counts, model = _counts(Pop, config, train)
    expected = torch.bincount(train._dataset.inter_feat["item_id"], minlength=dataset.item_num)
    assert torch.equal(counts, expected)
    assert int(model.max_cnt) == int(expected.max()) > 1
    # RecBole's own Pop counts one per distinct item of a batch: fewer in large batches.
    stock, _ = _counts(RecBolePop, config, train)
    if batch_size > 3:
        assert int(stock.sum()) < int(expected.sum())


def test_shadows_recboles_pop_in_the_registry():
    spec = registry.get("pop")
    assert spec.cls is Pop and spec.source == "recbole_ext"
    assert spec.shadows == "recbole.model.general_recommender.pop.Pop"
