"""Full-ranking evaluation as one score matrix per batch of users.

RecBole's ``Trainer.evaluate`` scores ``eval_batch_size // n_items`` users per batch for general
models (one user per batch when the items outnumber the batch size), concatenates each batch's
history and positives from per-user Python lists, builds a dense position matrix per batch and
computes the metrics through row loops. :func:`full_ranking` gives the same numbers, bit for bit,
from ``eval_batch_size`` users per batch:

- the model input of a batch is what RecBole's ``FullSortEvalDataLoader`` gives the model
  (general: rows of ``loader.user_df``; sequential: ``loader._dataset[index]`` through
  ``loader.transform``); scores come from ``model.full_sort_predict`` (``predict`` over every item
  for models without it, in RecBole's chunks) as a ``[users, n_items]`` matrix;
- the padding item 0 and the history are ranked -inf. The history and the positives are sparse
  matrices built once per loader (cached on it) whose rows follow the evaluation order, so a
  batch is a slice of them. General models: RecBole's ``uid2history_item`` (the items of earlier
  phases minus the user's positives) and ``uid2positive_item``; sequential models: the loader's
  ``exclude_history_csr`` (the harness's ``exclude_history_items``) if it has one, and the row's
  target item;
- ``torch.topk`` picks the top ``max(topk)`` as RecBole's collector does (ties: whatever topk
  returns on the same scores), hits are looked up in the positives, and the metrics are RecBole's
  formulas vectorised over users (numpy float64, the same operations in the same order, so the
  values are identical; ``RecallCap`` is :mod:`recbole_ext.metrics`).

:func:`supports_fast_ranking` says which loaders this covers; anything else (value metrics such
as AUC, GAUC's mean ranks, sampled evaluation, distributed runs, trainers with their own
evaluation) stays on RecBole's path.

Memory: a batch holds ``users x n_items`` scores (plus the model's own intermediates), so the
users per batch are capped at ``MAX_BATCH_SCORES // n_items`` (2**26 scores: 256 MiB of float32)
when ``eval_batch_size`` users would pass it: 4,096 users up to 16,384 items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.trainer.trainer import Trainer
from recbole.utils import get_trainer

from recbole_ext.data import accepts_trimmed_batches, list_fields, trim_to_longest

MAX_BATCH_SCORES = 1 << 26
# The cache attribute set on a loader by the first full_ranking over it.
_CACHE_ATTRIBUTE = "_full_ranking_index"


@dataclass
class RankingResult:
    """``metrics``: RecBole's keys and values (``"ndcg@10"`` -> mean over users, rounded to
    ``metric_decimal_place`` as ``Trainer.evaluate`` returns them). ``per_user``: ``"user_id"``
    (internal ids, in evaluation order) and ``"<metric>@<k>"`` (one float64 per user), the keys
    of ``RecordingMixin.last_per_user``."""

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]


# --- RecBole's top-k metrics, vectorised --------------------------------------------------------
# Each takes ``pos_index`` ([users, max K] bool: the j-th ranked item is a positive) and
# ``pos_len`` ([users] int: the user's number of positives) and returns [users, max K] values at
# K = 1..max K, computed with the operations of RecBole's ``metric_info`` in the same order.


def _ranks(pos_index: np.ndarray) -> np.ndarray:
    return np.arange(1, pos_index.shape[1] + 1)


def _hit(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    return (np.cumsum(pos_index, axis=1) > 0).astype(int)


def _mrr(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    first = pos_index.argmax(axis=1)
    found = pos_index[np.arange(len(pos_index)), first]
    reciprocal = 1 / (first + 1)
    at_or_after = np.arange(pos_index.shape[1]) >= first[:, None]
    return np.where(at_or_after & found[:, None], reciprocal[:, None], 0.0)


def _map(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    ranks = _ranks(pos_index)
    precision = pos_index.cumsum(axis=1) / ranks
    sum_precision = np.cumsum(precision * pos_index.astype(float), axis=1)
    actual_len = np.minimum(pos_len, pos_index.shape[1])
    # RecBole divides by min(rank, |R(u)|): ranges[lens:] = ranges[lens - 1], which for a user
    # without positives (lens 0) is the last rank everywhere.
    denominator = np.minimum(ranks, actual_len[:, None])
    denominator[actual_len == 0] = ranks[-1]
    return sum_precision / denominator


def _recall(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    return np.cumsum(pos_index, axis=1) / pos_len.reshape(-1, 1)


def _recall_cap(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    cutoffs = _ranks(pos_index).reshape(1, -1)
    return np.cumsum(pos_index, axis=1) / np.minimum(cutoffs, pos_len.reshape(-1, 1))


def _ndcg(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    discount = 1.0 / np.log2(_ranks(pos_index).astype(float) + 1)
    ideal = np.cumsum(discount)
    # Ideal DCG at K is that of min(K, |R(u)|) hits: RecBole's idcg[row, idx:] = idcg[row, idx-1]
    # with idx = min(|R(u)|, max K); idx 0 reads index -1, as RecBole does.
    idcg_len = np.minimum(pos_len, pos_index.shape[1])
    idcg = ideal[np.minimum(np.arange(pos_index.shape[1]), idcg_len[:, None] - 1)]
    dcg = np.cumsum(np.where(pos_index, discount, 0), axis=1)
    return dcg / idcg


def _precision(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    return pos_index.cumsum(axis=1) / _ranks(pos_index)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "hit": _hit,
    "mrr": _mrr,
    "map": _map,
    "recall": _recall,
    "recallcap": _recall_cap,
    "ndcg": _ndcg,
    "precision": _precision,
}


# --- which loaders ------------------------------------------------------------------------------


def supports_fast_ranking(config: Any, loader: Any) -> bool:
    """Whether :func:`full_ranking` gives what RecBole's evaluation gives for ``loader``: a
    full-ranking loader, only the top-k metrics of :data:`METRICS`, one process, and a trainer
    that evaluates as RecBole's ``Trainer`` does."""
    if not isinstance(loader, FullSortEvalDataLoader):
        return False
    if not config["single_spec"]:
        return False
    metrics = [str(m).lower() for m in config["metrics"]]
    if not metrics or not set(metrics) <= set(METRICS):
        return False
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])
    return (
        issubclass(trainer, Trainer)
        and trainer.evaluate is Trainer.evaluate
        and trainer._full_sort_batch_eval is Trainer._full_sort_batch_eval
    )


def users_per_batch(config: Any, n_items: int) -> int:
    """``eval_batch_size`` users, fewer if their scores would pass :data:`MAX_BATCH_SCORES`."""
    return max(1, min(int(config["eval_batch_size"]), MAX_BATCH_SCORES // n_items))


# --- the per-loader index -----------------------------------------------------------------------


@dataclass
class _LoaderIndex:
    """What a loader's evaluation needs, row i being the i-th evaluated row (user)."""

    users: np.ndarray  # [rows] internal user ids
    history: sp.csr_matrix | None  # [rows, n_items]: items ranked -inf
    positive_keys: np.ndarray  # sorted row * n_items + item of every positive
    positive_count: np.ndarray  # [rows] distinct positives
    n_items: int
    sequential: bool


def _rows_matrix(item_lists: Any, n_items: int) -> sp.csr_matrix:
    """A CSR matrix whose row i holds the item ids of the i-th tensor of ``item_lists``."""
    lengths = np.fromiter((len(items) for items in item_lists), dtype=np.int64)
    items = torch.cat(list(item_lists)).numpy() if lengths.sum() else np.empty(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return _binary_csr(rows, items, (len(lengths), n_items))


def _binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()  # one entry per (row, item), indices sorted within each row
    matrix.data[:] = 1
    return matrix


def _build_index(loader: Any) -> _LoaderIndex:
    dataset = loader._dataset
    n_items = int(dataset.item_num)
    sequential = bool(loader.is_sequential)
    if sequential:
        users = dataset.inter_feat[dataset.uid_field].numpy().astype(np.int64)
        items = dataset.inter_feat[dataset.iid_field].numpy()
        positives = _binary_csr(np.arange(len(users)), items, (len(users), n_items))
        excluded = getattr(loader, "exclude_history_csr", None)
        history = sp.csr_matrix(excluded[users]) if excluded is not None else None
    else:
        users = loader.uid_list.numpy().astype(np.int64)
        positives = _rows_matrix(loader.uid2positive_item[users], n_items)
        history = _rows_matrix(loader.uid2history_item[users], n_items)
    rows = np.repeat(np.arange(positives.shape[0], dtype=np.int64), np.diff(positives.indptr))
    return _LoaderIndex(
        users=users,
        history=history,
        positive_keys=rows * n_items + positives.indices,
        positive_count=np.diff(positives.indptr),
        n_items=n_items,
        sequential=sequential,
    )


def _loader_index(loader: Any) -> _LoaderIndex:
    index = getattr(loader, _CACHE_ATTRIBUTE, None)
    if index is None:
        index = _build_index(loader)
        setattr(loader, _CACHE_ATTRIBUTE, index)
    return index


# --- scoring ------------------------------------------------------------------------------------


def _model_input(loader: Any, index: _LoaderIndex, rows: np.ndarray, trim: bool) -> Any:
    """The interaction RecBole's FullSortEvalDataLoader collates for ``rows`` (padded only to
    the rows' longest sequence when ``trim``)."""
    if index.sequential:
        dataset = loader._dataset
        interaction = loader.transform(dataset, dataset[rows])
        if trim:
            interaction = trim_to_longest(
                interaction, list_fields(dataset), dataset.item_list_length_field
            )
        return interaction
    return loader.user_df[rows]


def _evaluation_order(loader: Any, index: _LoaderIndex, model: Any) -> tuple[np.ndarray, bool]:
    """The rows in the order they are scored, and whether batches are trimmed: a sequential
    model that accepts it scores its rows sorted by length, each batch padded only to its own
    longest sequence (most Beauty histories are far shorter than MAX_ITEM_LIST_LENGTH); the
    values go back to the evaluation order."""
    n_rows = len(index.users)
    if not index.sequential or not accepts_trimmed_batches(type(model)):
        return np.arange(n_rows), False
    dataset = loader._dataset
    lengths = dataset.inter_feat[dataset.item_list_length_field].numpy()
    return np.argsort(lengths, kind="stable"), True


def _predict_every_item(
    model: Any, interaction: Any, item_feature: Any, n_items: int, chunk: int
) -> torch.Tensor:
    """RecBole's fallback for models without ``full_sort_predict``: ``predict`` on every (user,
    item) pair, for as many users at a time as RecBole's general loader holds, in chunks of at
    most ``eval_batch_size`` pairs."""
    users_at_once = max(chunk // n_items, 1)
    scores = []
    for first in range(0, len(interaction), users_at_once):
        users = interaction[first : first + users_at_once]
        pairs = users.repeat_interleave(n_items)
        pairs.update(item_feature.repeat(len(users)))
        for begin in range(0, len(pairs), chunk):
            result = model.predict(pairs[begin : begin + chunk])
            scores.append(result.reshape(-1))
    return torch.cat(scores)


def _ranked_hits(top: np.ndarray, index: _LoaderIndex, rows: np.ndarray) -> np.ndarray:
    """[rows, K] bool: whether each top-ranked item of ``rows`` is one of the row's positives
    (a sorted-key lookup instead of RecBole's dense positive matrix)."""
    keys = rows.astype(np.int64)[:, None] * index.n_items + top
    found = np.searchsorted(index.positive_keys, keys)
    found = np.minimum(found, len(index.positive_keys) - 1)
    return index.positive_keys[found] == keys


@torch.no_grad()
def full_ranking(model: Any, loader: Any, config: Any, device: Any) -> RankingResult:
    """Evaluate ``model`` on a full-ranking ``loader`` (see the module docstring); the values
    are those of RecBole's ``Trainer.evaluate`` and the harness's per-user capture."""
    index = _loader_index(loader)
    n_rows, n_items = len(index.users), index.n_items
    names = list(dict.fromkeys(str(m).lower() for m in config["metrics"]))
    topk = list(config["topk"])
    max_k = max(topk)
    batch = users_per_batch(config, n_items)
    model.eval()
    item_feature = None
    pos_index = np.zeros((n_rows, max_k), dtype=bool)
    order, trim = _evaluation_order(loader, index, model)
    for start in range(0, n_rows, batch):
        rows = order[start : start + batch]
        interaction = _model_input(loader, index, rows, trim).to(device)
        try:
            scores = model.full_sort_predict(interaction)
        except NotImplementedError:
            if item_feature is None:
                item_feature = loader._dataset.get_item_feature().to(device)
            chunk = int(config["eval_batch_size"])
            scores = _predict_every_item(model, interaction, item_feature, n_items, chunk)
        scores = scores.view(-1, n_items)
        scores[:, 0] = -np.inf
        if index.history is not None:
            history = index.history[rows]
            masked_rows = np.repeat(np.arange(len(rows)), np.diff(history.indptr))
            masked_cols = torch.from_numpy(history.indices.astype(np.int64))
            scores[
                torch.from_numpy(masked_rows).to(scores.device), masked_cols.to(scores.device)
            ] = -np.inf
        _, top = torch.topk(scores, max_k, dim=-1)
        pos_index[rows] = _ranked_hits(top.cpu().numpy(), index, rows)

    # RecBole's collector keeps the positive counts as torch.int (int32).
    pos_len = index.positive_count.astype(np.int32)
    decimals = config["metric_decimal_place"]
    metrics: dict[str, float] = {}
    per_user: dict[str, np.ndarray] = {"user_id": index.users.copy()}
    for name in names:
        values = METRICS[name](pos_index, pos_len)
        means = values.mean(axis=0)  # over axis 0 of [users, K], as RecBole's topk_result
        for k in topk:
            metrics[f"{name}@{k}"] = float(round(means[k - 1], decimals))
            per_user[f"{name}@{k}"] = values[:, k - 1].astype(np.float64)
    return RankingResult(metrics=metrics, per_user=per_user)
