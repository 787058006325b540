"""RecallCap (Recall@K over min(K, |R(u)|)) and NDCG@100 through RecBole's Config / Evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_ext.metrics import RecallCap, register_metrics

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"


def direct_recall_cap(scores: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """vae_cf's Recall_at_k_batch, written out: hits in the top k / min(k, |held-out|)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    return hits / np.minimum(k, truth.sum(axis=1))


def direct_ndcg(scores: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (np.take_along_axis(truth, top, axis=1) * discount).sum(axis=1)
    idcg = np.array([discount[: min(int(n), k)].sum() for n in truth.sum(axis=1)])
    return dcg / idcg


def test_metric_info_matches_direct_formula() -> None:
    # 3 users, ranked hit indicators for the top 4; |R(u)| = 5, 1 and 3.
    pos_index = np.array(
        [[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 0, 1]],
        dtype=bool,
    )
    pos_len = np.array([5, 1, 3])
    metric = RecallCap({"topk": [1, 2, 4], "metric_decimal_place": 6})
    got = metric.metric_info(pos_index, pos_len)
    expected = np.array(
        [
            [1 / 1, 1 / 2, 2 / 3, 3 / 4],  # min(k, 5) = k
            [0 / 1, 1 / 1, 1 / 1, 1 / 1],  # min(k, 1) = 1
            [1 / 1, 2 / 2, 2 / 3, 3 / 3],  # min(k, 3)
        ]
    )
    np.testing.assert_allclose(got, expected)
    # RecBole's Recall divides by |R(u)|: different for user 0 at every k.
    assert got[0, 3] == pytest.approx(0.75) and 3 / 5 != pytest.approx(0.75)


def test_registered_and_evaluated_by_recbole(tmp_path: Path) -> None:
    from recbole.config import Config
    from recbole.evaluator import Collector, Evaluator, metric_types
    from recbole.evaluator.register import metrics_dict

    from recbole_ext.models.mult_vae import MultVAE

    register_metrics()  # idempotent
    assert metrics_dict["recallcap"] is RecallCap and "recallcap" in metric_types
    n_users, n_items = 6, 130
    config = Config(
        model=MultVAE,
        dataset="tiny",
        config_file_list=[str(CONFIG_DIR / "MultVAE.yaml")],
        config_dict={
            "data_path": str(tmp_path),
            "metrics": ["RecallCap", "Recall", "NDCG"],
            "topk": [3, 20, 100],
            "valid_metric": "NDCG@100",
            "metric_decimal_place": 12,
        },
    )
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)
    truth = np.zeros((n_users, n_items))
    for u, n in enumerate([1, 2, 5, 25, 40, 3]):
        truth[u, rng.choice(n_items, size=n, replace=False)] = 1
    positive_u, positive_i = np.nonzero(truth)

    collector = Collector(config)
    collector.eval_batch_collect(
        torch.tensor(scores), None, torch.tensor(positive_u), torch.tensor(positive_i)
    )
    result = Evaluator(config).evaluate(collector.get_data_struct())
    for k in (3, 20, 100):
        assert result[f"recallcap@{k}"] == pytest.approx(
            direct_recall_cap(scores, truth, k).mean(), abs=1e-9
        )
        assert result[f"ndcg@{k}"] == pytest.approx(direct_ndcg(scores, truth, k).mean(), abs=1e-9)
    # The two recalls differ only where |R(u)| > K: here K = 3 and users with 5, 25, 40 items.
    assert result["recallcap@3"] > result["recall@3"]
    assert result["recallcap@100"] == pytest.approx(result["recall@100"], abs=1e-12)
