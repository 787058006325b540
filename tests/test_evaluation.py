"""Full ranking as one score matrix per batch of users (recbole_ext.evaluation) against RecBole's
``Trainer.evaluate`` and the harness's per-user capture, on ml-100k: identical per-user values in
the same user order and identical mean metrics."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.register import metrics_dict
from recbole.model.general_recommender.bpr import BPR
from recbole.trainer.trainer import DecisionTreeTrainer, Trainer
from recbole.utils import init_seed

from bench.preflight import preflight
from recbole_ext import evaluation
from recbole_ext.data import fold_in, load_dataset, prepare_data
from recbole_ext.evaluation import full_ranking, supports_fast_ranking, users_per_batch
from recbole_ext.training import _per_user_topk, recording_trainer

# Every metric full_ranking implements, at cut-offs below, at and above the typical positives.
ALL_METRICS = ["Recall", "NDCG", "MRR", "Hit", "Precision", "MAP", "RecallCap"]
CHEAP = {"metrics": ALL_METRICS, "topk": [1, 5, 10, 20], "epochs": 1, "train_sample_limit": 2000}
SEQUENCE = {"MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 8, "inner_size": 16, "n_layers": 1}
GRU = {"embedding_size": 8, "hidden_size": 8, "num_layers": 1}
HELDOUT = {"valid": 40, "test": 40, "fold_in": 0.8, "seed": 0}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ml-100k is processed once per dataset class for the whole module."""
    return tmp_path_factory.mktemp("cache")


class Run:
    """A model trained one epoch on ml-100k through the harness's config layers and data
    preparation, with its recording trainer."""

    def __init__(self, model: str, cache_dir: Path, **settings: Any) -> None:
        (prepared,) = preflight(
            [model], "ml-100k", settings={**CHEAP, **settings}, device="cpu"
        ).runs
        self.settings = prepared.settings
        config_dict = dict(prepared.recbole_config)
        config_dict.update(
            data_path=str(prepared.data_path), checkpoint_dir=tempfile.mkdtemp(prefix="ck-")
        )
        self.config = Config(
            model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
        )
        init_seed(self.config["seed"], self.config["reproducibility"])
        dataset, _ = load_dataset(self.config, cache_dir)
        self.data = prepare_data(self.config, dataset, self.settings)
        self.model_class = prepared.spec.cls

    def train(self, model_class: type | None = None) -> Run:
        init_seed(self.config["seed"], self.config["reproducibility"])
        cls = model_class or self.model_class
        self.model = cls(self.config, self.data.model_dataset).to(self.config["device"])
        if self.data.fold_in is not None:
            fold_in(self.model, self.data.fold_in)
        self.trainer = recording_trainer(self.config, self.model, settings=self.settings)
        self.trainer._train_epoch(self.data.train, 0)
        return self

    def recbole(self, loader: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """RecBole's own evaluation (the trainer's fast path switched off)."""
        self.trainer.settings = dataclasses.replace(self.settings, fast_evaluation=False)
        try:
            result = self.trainer.evaluate(loader, load_best_model=False)
        finally:
            self.trainer.settings = self.settings
        return dict(result), self.trainer.last_per_user

    def through_trainer(self, loader: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The trainer's default evaluation (the fast path)."""
        result = self.trainer.evaluate(loader, load_best_model=False)
        return dict(result), self.trainer.last_per_user

    def fast(self, loader: Any) -> evaluation.RankingResult:
        return full_ranking(self.model, loader, self.config, self.config["device"])


def assert_identical(run: Run, loader: Any) -> evaluation.RankingResult:
    """RecBole's path, then ours: same keys, same values bit for bit, same user order."""
    assert supports_fast_ranking(run.config, loader)
    metrics, per_user = run.recbole(loader)
    result = run.fast(loader)
    # The trainer's own evaluate takes the fast path, with the same values.
    through_trainer = run.through_trainer(loader)
    assert through_trainer[0] == result.metrics
    assert all(np.array_equal(v, result.per_user[k]) for k, v in through_trainer[1].items())
    assert result.metrics == metrics
    assert list(result.metrics) == list(metrics)  # RecBole's key order
    assert set(result.per_user) == set(per_user) and len(per_user) == 1 + len(metrics)
    for key, values in per_user.items():
        assert result.per_user[key].dtype == values.dtype, key
        assert np.array_equal(result.per_user[key], values), key
    assert result.metrics["hit@20"] > 0  # the comparison saw hits, not only zeros
    return result


@pytest.fixture(scope="module")
def pop(cache_dir: Path) -> Run:
    # 256 users per batch here against RecBole's one (256 // 1,683 items rounds up to one).
    return Run("Pop", cache_dir, eval_batch_size=256).train()


def test_pop_ties_match_recbole(pop: Run):
    # Popularity from 2,000 interactions: most items share their count with others, so the
    # top-k cut falls inside runs of equal scores and torch.topk's tie order decides the hits.
    scores = pop.model.full_sort_predict(pop.data.valid.user_df[np.arange(1)])
    top21 = torch.sort(scores, descending=True).values[:21]
    assert top21[19] == top21[20] or top21[4] == top21[5]
    assert len(torch.unique(scores)) < len(scores) / 10
    for loader in (pop.data.valid, pop.data.test):
        assert_identical(pop, loader)


def test_bpr_matches_recbole(cache_dir: Path):
    run = Run("BPR", cache_dir, embedding_size=8).train()
    assert_identical(run, run.data.valid)  # 943 users in one batch; RecBole: 2 users a batch
    # Several batches, the last one short.
    run.config["eval_batch_size"] = 300
    assert_identical(run, run.data.test)


class _BPRWithoutFullSort(BPR):
    """BPR as a model without full_sort_predict: both paths fall back to predict."""

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        raise NotImplementedError


def test_models_without_full_sort_predict_are_scored_through_predict(cache_dir: Path):
    # 1,000 pairs per predict call: one user's 1,683 items take two calls, as in RecBole.
    run = Run("BPR", cache_dir, embedding_size=8, eval_batch_size=1000)
    run.train(_BPRWithoutFullSort)
    assert_identical(run, run.data.valid)


@pytest.mark.parametrize(
    ("model", "exclude"),
    [("SASRec", True), ("GRU4Rec", False)],
)
def test_sequential_models_match_recbole(cache_dir: Path, model: str, exclude: bool):
    settings = SEQUENCE if model == "SASRec" else {**GRU, "MAX_ITEM_LIST_LENGTH": 10}
    run = Run(model, cache_dir, eval_batch_size=256, exclude_history_items=exclude, **settings)
    run.train()
    assert hasattr(run.data.valid, "exclude_history_csr") == exclude
    for loader in (run.data.valid, run.data.test):
        assert_identical(run, loader)


def test_strong_generalization_with_several_targets_matches_recbole(cache_dir: Path):
    run = Run(
        "MultVAE",
        cache_dir,
        heldout_users=HELDOUT,
        mlp_hidden_size=[16],
        latent_dimension=8,
        eval_batch_size=16,
    ).train()
    for loader in (run.data.valid, run.data.test):
        result = assert_identical(run, loader)
        assert len(result.per_user["user_id"]) == 40
        # Users with more positives than some cut-offs and fewer than others: the min(K, |R(u)|)
        # branches of NDCG, MAP and RecallCap are both taken.
        positives = getattr(loader, evaluation._CACHE_ATTRIBUTE).positive_count
        assert positives.max() > 20 and positives.min() < 5


def test_a_batch_holds_eval_batch_size_users_unless_the_scores_pass_the_cap(
    pop: Run, monkeypatch: pytest.MonkeyPatch
):
    n_items = pop.data.valid._dataset.item_num
    assert users_per_batch({"eval_batch_size": 4096}, 12101) == 4096  # Beauty: 49.6M scores
    assert users_per_batch({"eval_batch_size": 4096}, 20000) == (1 << 26) // 20000
    monkeypatch.setattr(evaluation, "MAX_BATCH_SCORES", 100 * n_items + 5)
    assert users_per_batch(pop.config, n_items) == 100
    sizes: list[int] = []
    predict = pop.model.full_sort_predict

    def counting_predict(interaction: Any) -> torch.Tensor:
        sizes.append(len(interaction))
        return predict(interaction)

    monkeypatch.setattr(pop.model, "full_sort_predict", counting_predict)
    assert_identical(pop, pop.data.valid)
    sizes = sizes[len(sizes) - 10 :]  # ours come after RecBole's one-user calls
    assert sizes == [100] * 9 + [43]  # 943 users


def test_the_loader_index_is_built_once(pop: Run, monkeypatch: pytest.MonkeyPatch):
    loader = pop.data.test
    built: list[Any] = []
    build = evaluation._build_index

    def counting_build(loader: Any) -> Any:
        built.append(loader)
        return build(loader)

    monkeypatch.setattr(evaluation, "_build_index", counting_build)
    monkeypatch.delattr(loader, evaluation._CACHE_ATTRIBUTE, raising=False)
    first = pop.fast(loader)
    second = pop.fast(loader)
    assert built == [loader]
    assert first.metrics == second.metrics


class _OwnEvaluation(Trainer):
    def _full_sort_batch_eval(self, batched_data: Any) -> Any:
        return super()._full_sort_batch_eval(batched_data)


def test_what_full_ranking_does_not_cover_is_refused(
    pop: Run, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    config, loader = pop.config, pop.data.valid
    assert supports_fast_ranking(config, loader)
    assert not supports_fast_ranking(config, pop.data.train)  # not a full-ranking loader
    plain = dict(config.final_config_dict)
    for overrides in (
        {"metrics": ["Recall", "GAUC"]},  # a ranking metric on mean ranks, not the top k
        {"metrics": ["AUC"]},  # a value metric
        {"metrics": []},
        {"single_spec": False},  # distributed
    ):
        assert not supports_fast_ranking({**plain, **overrides}, loader), overrides
    assert supports_fast_ranking({**plain, "metrics": ["hit", "recallcap"]}, loader)
    for trainer in (_OwnEvaluation, DecisionTreeTrainer):
        monkeypatch.setattr(evaluation, "get_trainer", lambda model_type, name, t=trainer: t)
        assert not supports_fast_ranking(config, loader), trainer
    monkeypatch.undo()
    sampled = Run("Pop", cache_dir, eval_args={**config["eval_args"], "mode": "uni100"})
    assert not supports_fast_ranking(sampled.config, sampled.data.valid)


@pytest.mark.parametrize("name", sorted(evaluation.METRICS))
def test_each_metric_equals_recboles_metric_info(name: str):
    # Random rankings with users of no, few and many positives (more than the largest cut-off).
    rng = np.random.default_rng(0)
    pos_index = rng.random((400, 20)) < 0.15
    pos_len = (pos_index.sum(axis=1) + rng.integers(0, 30, size=400)).astype(np.int32)
    pos_index[:5], pos_len[:5] = False, 0
    pos_len[5:10] = 25
    metric = metrics_dict[name]({"metric_decimal_place": 17, "topk": [20]})
    with np.errstate(divide="ignore", invalid="ignore"):  # Recall of a user without positives
        expected = _per_user_topk(metric, _topk_struct(pos_index, pos_len))
        values = evaluation.METRICS[name](pos_index, pos_len)
    assert values.dtype == expected.dtype
    assert np.array_equal(values, expected, equal_nan=True)


def _topk_struct(pos_index: np.ndarray, pos_len: np.ndarray) -> DataStruct:
    """The ``rec.topk`` RecBole's collector hands its metrics: hits then the positive count."""
    struct = DataStruct()
    struct.set("rec.topk", torch.from_numpy(np.c_[pos_index, pos_len].astype(np.int32)))
    return struct
