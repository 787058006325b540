"""MarkovChain: exact counts on a handmade example, recovery of a known transition matrix, and a
short run through RecBole's trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_trainer

from recbole_ext.data import one_sample_per_user
from recbole_ext.models.markov_chain import MarkovChain
from tests.helpers import ROOT, write_inter

YAML = str(ROOT / "configs" / "models" / "MarkovChain.yaml")


def _build(tmp_path: Path, rows: list[tuple[int, int, float]], **extra: object):
    write_inter(tmp_path, "mc", rows)
    settings = {
        "data_path": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ck"),
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 10,
        "metrics": ["Recall", "NDCG"],
        "topk": [2],
        "valid_metric": "NDCG@2",
        "show_progress": False,
        "seed": 0,
        **extra,
    }
    config = Config(model=MarkovChain, dataset="mc", config_file_list=[YAML], config_dict=settings)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, valid, test


def _rows(sequences: dict[int, list[int]]) -> list[tuple[int, int, float]]:
    return [(u, i, float(t)) for u, seq in sequences.items() for t, i in enumerate(seq)]


# The last two items of each user are validation and test: never counted.
HANDMADE = {
    1: [1, 2, 3, 1, 2, 4, 5],  # training 1 2 3 1 2: 1->2 twice, 2->3, 3->1
    2: [2, 3, 4, 1, 5],  # training 2 3 4: 2->3, 3->4
    3: [3, 1, 2, 2, 5, 4],  # training 3 1 2 2: 3->1, 1->2, 2->2
    4: [5, 1, 3, 2],  # training 5 1: 5->1
}
TRAIN_COUNTS = {(1, 2): 3, (2, 3): 2, (3, 1): 2, (3, 4): 1, (2, 2): 1, (5, 1): 1}
# Items of the training parts: 1 x4, 2 x5, 3 x3, 4 x1, 5 x1
TRAIN_POPULARITY = {1: 4, 2: 5, 3: 3, 4: 1, 5: 1}


def _expected(dataset, alpha: float, backoff: str) -> np.ndarray:
    """P(j | i) over internal ids, straight from the handmade counts."""
    n = dataset.item_num
    iid = {tok: int(dataset.token2id(dataset.iid_field, str(tok))) for tok in range(1, 6)}
    counts = np.zeros((n, n))
    for (a, b), c in TRAIN_COUNTS.items():
        counts[iid[a], iid[b]] = c
    prior = np.zeros(n)
    if backoff == "uniform":
        prior[1:] = 1.0 / (n - 1)
    else:
        for tok, c in TRAIN_POPULARITY.items():
            prior[iid[tok]] = c / sum(TRAIN_POPULARITY.values())
    mass = alpha * (n - 1)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = (counts + mass * prior) / (totals + mass)
    return np.where(totals + mass > 0, probs, prior)


@pytest.mark.parametrize(
    ("alpha", "backoff"), [(0.0, "uniform"), (1.0, "uniform"), (0.5, "popularity")]
)
def test_handmade_counts_give_exact_probabilities(tmp_path, alpha, backoff):
    config, dataset, train, _, test = _build(
        tmp_path, _rows(HANDMADE), smoothing_alpha=alpha, backoff=backoff
    )
    model = MarkovChain(config, train._dataset)
    expected = _expected(dataset, alpha, backoff)
    every_item = torch.arange(1, dataset.item_num)
    np.testing.assert_allclose(model.forward(every_item).numpy(), expected[1:], atol=1e-6)
    # Rows sum to one over the real items.
    np.testing.assert_allclose(model.forward(every_item)[:, 1:].sum(1).numpy(), 1.0, atol=1e-5)

    # Test rows: the input is everything before the test item; its last item is the validation one.
    interaction = test.dataset.inter_feat
    last = interaction["item_id_list"][
        torch.arange(len(interaction)), interaction["item_length"] - 1
    ]
    scores = model.full_sort_predict(interaction)
    assert scores.shape == (len(interaction), dataset.item_num)
    np.testing.assert_allclose(scores.numpy(), expected[last.numpy()], atol=1e-6)
    pointwise = model.predict(interaction)
    target = interaction["item_id"].numpy()
    np.testing.assert_allclose(pointwise.numpy(), expected[last.numpy(), target], atol=1e-6)


def test_users_regime_counts_the_same_transitions(tmp_path):
    config, dataset, train, _, _ = _build(
        tmp_path, _rows(HANDMADE), smoothing_alpha=1.0, backoff="popularity"
    )
    per_prefix = MarkovChain(config, train._dataset)
    one_row = train._dataset.copy(train._dataset.inter_feat)
    one_sample_per_user(one_row)
    assert len(one_row.inter_feat) == 4
    per_user = MarkovChain(config, one_row)
    items = torch.arange(1, dataset.item_num)
    np.testing.assert_allclose(per_user.forward(items).numpy(), per_prefix.forward(items).numpy())
    np.testing.assert_allclose(
        per_user.forward(items).numpy(), _expected(dataset, 1.0, "popularity")[1:], atol=1e-6
    )


def test_unseen_source_backs_off_to_popularity(tmp_path):
    # Item 4 is never followed by anything in training: its row is the popularity distribution.
    config, dataset, train, _, _ = _build(
        tmp_path, _rows(HANDMADE), smoothing_alpha=0.0, backoff="popularity"
    )
    model = MarkovChain(config, train._dataset)
    four = torch.tensor([int(dataset.token2id(dataset.iid_field, "4"))])
    row = model.forward(four)[0].numpy()
    for tok, count in TRAIN_POPULARITY.items():
        assert row[int(dataset.token2id(dataset.iid_field, str(tok)))] == pytest.approx(count / 14)


def test_recovers_a_known_transition_matrix(tmp_path):
    truth = np.array(
        [
            [0.1, 0.6, 0.1, 0.1, 0.1],
            [0.05, 0.05, 0.8, 0.05, 0.05],
            [0.3, 0.1, 0.1, 0.4, 0.1],
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.7, 0.1, 0.05, 0.05, 0.1],
        ]
    )
    rng = np.random.default_rng(0)
    sequences = {}
    for user in range(1, 121):
        state = int(rng.integers(5))
        seq = [state + 1]
        for _ in range(60):
            state = int(rng.choice(5, p=truth[state]))
            seq.append(state + 1)
        sequences[user] = seq
    config, dataset, train, _, _ = _build(
        tmp_path, _rows(sequences), smoothing_alpha=0.0, backoff="uniform", MAX_ITEM_LIST_LENGTH=3
    )
    model = MarkovChain(config, train._dataset)
    iid = [int(dataset.token2id(dataset.iid_field, str(tok))) for tok in range(1, 6)]
    estimate = model.forward(torch.tensor(iid))[:, iid].numpy()
    assert float(model.trans_count.sum()) == 120 * 58  # the training transitions, once each
    np.testing.assert_allclose(estimate, truth, atol=0.04)


def test_trainer_runs_one_epoch(tmp_path):
    rows = []
    rng = np.random.default_rng(1)
    for user in range(1, 21):
        rows += [(user, int(i), float(t)) for t, i in enumerate(rng.integers(1, 16, size=8))]
    config, dataset, train, valid, _ = _build(tmp_path, rows)
    model = MarkovChain(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    _, result = trainer.fit(train, valid, saved=True)
    assert np.isfinite(result["ndcg@2"])
    # The checkpoint (buffers included) reloads with weights_only and evaluates the same.
    reloaded = trainer.evaluate(valid, load_best_model=True)
    assert reloaded["ndcg@2"] == pytest.approx(result["ndcg@2"])
    batch = Interaction({k: v[:3] for k, v in valid.dataset.inter_feat.interaction.items()})
    scores = model.full_sort_predict(batch)
    assert scores.shape == (3, dataset.item_num)
    assert torch.isfinite(scores).all()
