"""RecBole dataset glue: a cache keyed by the dataset config, and data preparation with the
harness's training regimes and evaluation subsets.

Harness keys read here (defaults in ``configs/defaults.yaml``):

- ``train_regime``: ``interactions`` (RecBole's: every interaction, or every prefix of a sequence,
  is one training sample) or ``users`` (one training sample per user: its longest prefix for
  sequential data, one row for general data; models that score every position of the full
  sequence, and Mult-VAE's batches of users, use it).
- ``train_sample_limit``: keep a random subset of this many training samples (smoke runs).
- ``eval_user_limit``: evaluate a random subset of this many users (smoke runs).
- ``exclude_history_items``: for sequential models, rank no item the user interacted with before
  the evaluated target (RecBole does this for general models only). The history is the user's
  whole time-ordered sequence before the target, not the truncated ``MAX_ITEM_LIST_LENGTH`` input.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data.dataloader import FullSortEvalDataLoader, KnowledgeBasedDataLoader
from recbole.data.utils import create_samplers, get_dataloader
from recbole.sampler import KGSampler
from recbole.utils import ModelType
from recbole.utils.argument_list import dataset_arguments

TRAIN_REGIMES = ("interactions", "users")


def dataset_class(config: Any) -> type:
    """The RecBole dataset class RecBole's ``create_dataset`` would build for this config."""
    module = importlib.import_module("recbole.data.dataset")
    specific = getattr(module, f"{config['model']}Dataset", None)
    if specific is not None:
        return specific
    names = {
        ModelType.SEQUENTIAL: "SequentialDataset",
        ModelType.KNOWLEDGE: "KnowledgeBasedDataset",
    }
    return getattr(module, names.get(config["MODEL_TYPE"], "Dataset"))


def _files_fingerprint(directory: Path) -> list[tuple[str, int, int]]:
    if not directory.is_dir():
        return []
    return sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime))
        for p in directory.iterdir()
        if p.is_file()
    )


def dataset_cache_key(config: Any) -> str:
    """Hash of everything that shapes the processed dataset: its config keys, class and files."""
    cls = dataset_class(config)
    directory = Path(config["data_path"])
    payload = {
        "class": f"{cls.__module__}.{cls.__name__}",
        "dataset": config["dataset"],
        "args": {k: config[k] for k in dataset_arguments + ["seed", "repeatable"]},
        "files": _files_fingerprint(directory),
        "recbole_ext_format": 1,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_dataset(config: Any, cache_dir: str | os.PathLike | None = None) -> tuple[Any, bool]:
    """Build the RecBole dataset, or load it from the cache. Returns (dataset, was_cached)."""
    cls = dataset_class(config)
    if cache_dir is None:
        return cls(config), False
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{config['dataset']}-{cls.__name__}-{dataset_cache_key(config)}.pkl"
    if path.exists():
        try:
            with open(path, "rb") as f:
                dataset = pickle.load(f)
            dataset.config = config
            return dataset, True
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            path.unlink(missing_ok=True)  # a stale or truncated cache entry: rebuild it
    dataset = cls(config)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(dataset, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dataset, False


def _keep_rows(dataset: Any, index: np.ndarray) -> None:
    dataset.inter_feat = dataset.inter_feat[torch.as_tensor(np.sort(index), dtype=torch.long)]


def one_sample_per_user(dataset: Any) -> None:
    """Keep each user's single training sample: the longest history (sequential) or any one row."""
    users = dataset.inter_feat[dataset.uid_field].numpy()
    length_field = dataset.config["ITEM_LIST_LENGTH_FIELD"]
    if length_field in dataset.inter_feat:
        lengths = dataset.inter_feat[length_field].numpy()
        # Sort by (user, length); the last row of each user's run is its longest prefix.
        order = np.lexsort((lengths, users))
        last = np.r_[users[order][1:] != users[order][:-1], True]
        keep = order[last]
    else:
        _, keep = np.unique(users, return_index=True)
    _keep_rows(dataset, keep)


def _random_subset(n: int, limit: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=limit, replace=False)


def limit_samples(dataset: Any, limit: int, seed: int) -> None:
    """Keep a random subset of ``limit`` rows."""
    if limit and len(dataset.inter_feat) > limit:
        _keep_rows(dataset, _random_subset(len(dataset.inter_feat), limit, seed))


def limit_users(datasets: list[Any], limit: int, seed: int) -> None:
    """Keep the rows of the same random subset of ``limit`` users in every dataset."""
    if not limit:
        return
    uid_field = datasets[0].uid_field
    all_users = np.unique(np.concatenate([d.inter_feat[uid_field].numpy() for d in datasets]))
    if len(all_users) <= limit:
        return
    chosen = all_users[_random_subset(len(all_users), limit, seed)]
    for d in datasets:
        (keep,) = np.nonzero(np.isin(d.inter_feat[uid_field].numpy(), chosen))
        _keep_rows(d, keep)


def _interaction_matrix(dataset: Any, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    data = np.ones(len(users), dtype=np.float32)
    shape = (dataset.user_num, dataset.item_num)
    matrix = sp.csr_matrix((data, (users, items)), shape=shape)
    matrix.sum_duplicates()
    return matrix


def sequential_histories(train_ds: Any, valid_ds: Any) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Each user's items before the validation target and before the test target.

    Under a time-ordered split everything in an earlier phase precedes the target. The training
    samples hold every training item as a target except each user's first item, which is the
    first input of the sample with a 1-item history.
    """
    inter = train_ds.inter_feat
    users = inter[train_ds.uid_field].numpy()
    items = inter[train_ds.iid_field].numpy()
    first_rows = inter[train_ds.item_list_length_field].numpy() == 1
    first_items = inter[train_ds.item_id_list_field][torch.as_tensor(first_rows), 0].numpy()
    before_valid = _interaction_matrix(
        train_ds, np.r_[users, users[first_rows]], np.r_[items, first_items]
    )
    valid_users = valid_ds.inter_feat[valid_ds.uid_field].numpy()
    valid_items = valid_ds.inter_feat[valid_ds.iid_field].numpy()
    before_test = before_valid + _interaction_matrix(train_ds, valid_users, valid_items)
    return before_valid, before_test


def _exclude_history(loader: Any, history: sp.csr_matrix) -> None:
    """Make a sequential full-ranking loader return each row's history, so the trainer scores
    those items -inf as it does for general models."""
    collate = loader.collate_fn
    uid_field = loader._dataset.uid_field
    indptr, indices = history.indptr, history.indices

    def collate_with_history(index: Any) -> Any:
        interaction, _, positive_u, positive_i = collate(index)
        users = interaction[uid_field].numpy()
        counts = indptr[users + 1] - indptr[users]
        rows = np.repeat(np.arange(len(users)), counts)
        cols = np.concatenate([indices[indptr[u] : indptr[u + 1]] for u in users])
        history_index = (torch.as_tensor(rows), torch.as_tensor(cols, dtype=torch.long))
        return interaction, history_index, positive_u, positive_i

    loader.collate_fn = collate_with_history


def prepare_data(config: Any, dataset: Any) -> tuple[Any, Any, Any]:
    """Split and build the train / valid / test dataloaders, as RecBole's ``data_preparation``
    does, applying ``train_regime``, ``train_sample_limit`` and ``eval_user_limit`` first."""
    regime = config["train_regime"] or "interactions"
    if regime not in TRAIN_REGIMES:
        raise ValueError(f"train_regime must be one of {TRAIN_REGIMES}, not {regime!r}")
    train_ds, valid_ds, test_ds = dataset.build()
    sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    exclude_history = bool(config["exclude_history_items"]) and sequential
    if exclude_history:
        histories = sequential_histories(train_ds, valid_ds)
    if regime == "users":
        one_sample_per_user(train_ds)
    seed = int(config["seed"])
    limit_samples(train_ds, int(config["train_sample_limit"] or 0), seed)
    limit_users([valid_ds, test_ds], int(config["eval_user_limit"] or 0), seed)

    built = [train_ds, valid_ds, test_ds]
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:
        neg = config["train_neg_sample_args"]
        kg_sampler = KGSampler(dataset, neg["distribution"], neg["alpha"])
        train = KnowledgeBasedDataLoader(config, train_ds, train_sampler, kg_sampler, shuffle=True)
    else:
        train = get_dataloader(config, "train")(
            config, train_ds, train_sampler, shuffle=config["shuffle"]
        )
    valid = get_dataloader(config, "valid")(config, valid_ds, valid_sampler, shuffle=False)
    test = get_dataloader(config, "test")(config, test_ds, test_sampler, shuffle=False)
    if exclude_history:
        for loader, history in zip((valid, test), histories, strict=True):
            if isinstance(loader, FullSortEvalDataLoader):
                _exclude_history(loader, history)
    return train, valid, test
