"""RecBole dataset glue: a cache keyed by the dataset config, data preparation with the
harness's training regimes and evaluation subsets, and the harness's own settings.

The harness's keys (defaults in ``configs/defaults.yaml``) are parsed once into a typed
:class:`HarnessSettings` and handed to :func:`prepare_data` and the trainer
(``recbole_ext.training``), not read from RecBole's ``Config``; a script that builds its own
``Config`` with these keys in it may omit the settings, and they are read from the config. The
data keys:

- ``train_regime``: ``interactions`` (RecBole's: every interaction, or every prefix of a sequence,
  is one training sample) or ``users`` (whole sequences: for sequential data each user's longest
  prefix, plus, for a history longer than ``MAX_ITEM_LIST_LENGTH``, the earlier non-overlapping
  windows of that length, so that the windows together hold every training target once; for
  general data one row per user; models that score every position of a sequence, and Mult-VAE's
  batches of users, use it).
- ``bucket_by_length``: sequential models' training batches hold sequences of similar lengths
  (sorted by length with random tie-breaks, batch order shuffled every epoch); under ``users`` a
  batch holds about ``train_batch_size`` times the mean window length of *targets* rather than a
  fixed number of sequences, so that every target weighs alike in the per-batch mean loss and an
  epoch has as many steps as with random batches. Every batch of a model that accepts it
  (:func:`accepts_trimmed_batches`) is padded only to its own longest sequence.
- ``train_sample_limit``: train on a random subset of the rows holding about this many training
  targets (smoke runs): that many of RecBole's samples, or whole sequences / users' rows whose
  targets add up to it.
- ``eval_user_limit``: evaluate a random subset of this many users (smoke runs).
- ``exclude_history_items``: for sequential models, rank no item the user interacted with before
  the evaluated target (RecBole does this for general models only). The history is the user's
  whole time-ordered sequence before the target, not the truncated ``MAX_ITEM_LIST_LENGTH`` input.
- ``heldout_users``: strong generalization (Liang et al., WWW 2018), e.g.
  ``{valid: 600, test: 600, fold_in: 0.8, seed: 0}``. Whole users are held out for validation
  and test and never trained on; each held-out user's interactions are split at random into a
  fold-in part (``fold_in``) the model encodes at evaluation and a part to predict; fold-in
  items are excluded from the ranking; held-out interactions with items no training user has
  are dropped. ``None`` keeps RecBole's own split (``eval_args``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data.dataloader import (
    FullSortEvalDataLoader,
    KnowledgeBasedDataLoader,
    TrainDataLoader,
    UserDataLoader,
)
from recbole.data.interaction import Interaction
from recbole.data.utils import create_samplers, get_dataloader
from recbole.sampler import KGSampler
from recbole.utils import ModelType
from recbole.utils.argument_list import dataset_arguments

TRAIN_REGIMES = ("interactions", "users")


def type_of_model(config: Any) -> type:
    """The model class a config is for (RecBole's Config keeps it; a bare mapping names it)."""
    model_class = getattr(config, "model_class", None)
    if isinstance(model_class, type):
        return model_class
    from recbole_ext import registry

    return registry.get(str(config["model"])).cls


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


def whole_sequence_windows(dataset: Any) -> None:
    """Keep the prefix rows of a sequential training split whose windows cover every target once.

    RecBole's rows of a user are its prefixes in time order (``data_augmentation``); the row of a
    prefix of n items holds its last ``MAX_ITEM_LIST_LENGTH`` (W) items and the next item. A model
    that takes a loss at every position of a row learns the targets of its last W prefixes, so the
    rows n, n - W, n - 2W, ... (counted back from the longest) hold every target exactly once:
    the longest prefix for a user with at most W training targets, more windows for longer ones.
    """
    users = dataset.inter_feat[dataset.uid_field].numpy()
    window = int(dataset.config["MAX_ITEM_LIST_LENGTH"])
    order = np.argsort(users, kind="stable")  # stable: each user's rows keep their time order
    run_starts = np.r_[0, np.flatnonzero(users[order][1:] != users[order][:-1]) + 1]
    run_lengths = np.diff(np.r_[run_starts, len(users)])
    index_in_run = np.arange(len(users)) - np.repeat(run_starts, run_lengths)
    rows_after = np.repeat(run_lengths, run_lengths) - 1 - index_in_run
    _keep_rows(dataset, order[rows_after % window == 0])


# RecBole's sequential models whose every computation reads a sequence through its length (right
# padding, causal or length-masked layers): a batch padded only to its own longest sequence gives
# them the same results as one padded to MAX_ITEM_LIST_LENGTH. A model class says so itself with
# ``accepts_trimmed_batches = True`` (this package's models do, each tested).
_TRIM_SAFE_RECBOLE_MODELS = frozenset({"FPMC", "TransRec", "GRU4Rec", "NARM", "SASRec", "STAMP"})


def accepts_trimmed_batches(model_class: type) -> bool:
    """Whether the model may get batches padded only to their own longest sequence."""
    declared = getattr(model_class, "accepts_trimmed_batches", None)
    if declared is not None:
        return bool(declared)
    return (
        model_class.__module__.startswith("recbole.")
        and model_class.__name__ in _TRIM_SAFE_RECBOLE_MODELS
    )


class UserSubsetBatches:
    """RecBole's user loader (each batch ``train_batch_size`` user ids, every user of the
    dataset) restricted to random users holding about ``limit`` training interactions: the
    smoke runs' ``train_sample_limit`` for the autoencoders that RecBole batches by user.
    Batches come in a fresh random order every epoch from an own ``generator``."""

    def __init__(self, loader: Any, per_user: np.ndarray, limit: int, seed: int) -> None:
        self._loader = loader
        users = np.flatnonzero(per_user)  # users with training interactions (never padding 0)
        self.users = torch.as_tensor(np.sort(users[_rows_within(per_user[users], limit, seed)]))
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    def __iter__(self) -> Any:
        order = self.users[torch.randperm(len(self.users), generator=self.generator)]
        for batch in order.split(int(self._loader.step)):
            yield Interaction({self._loader.uid_field: batch})

    def __len__(self) -> int:
        return -(-len(self.users) // int(self._loader.step))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def list_fields(dataset: Any) -> list[str]:
    """A sequential dataset's per-position columns (``item_id_list`` ...), MAX_ITEM_LIST_LENGTH
    wide."""
    suffix = dataset.config["LIST_SUFFIX"]
    return [f for f in dataset.inter_feat.columns if f.endswith(suffix)]


def trim_to_longest(batch: Any, fields: list[str], length_field: str) -> Any:
    """``batch`` with its per-position ``fields`` cut to the batch's longest sequence."""
    width = max(int(batch[length_field].max()), 1)
    for name in fields:
        column = batch.interaction.get(name)
        if column is not None and column.dim() >= 2 and column.shape[1] > width:
            batch[name] = column[:, :width]
    return batch


class LengthBucketedBatches:
    """A sequential training loader's batches, grouped by length and trimmed (module docstring).

    Wraps RecBole's training loader: its ``collate_fn`` still builds every batch (negative sampling,
    transforms), from index sets chosen here with an own generator (``generator``: its state
    resumes a run); everything else is the wrapped loader's.
    """

    def __init__(self, loader: Any, seed: int, bucket: bool, trim: bool, per_target: bool) -> None:
        dataset = loader._dataset
        self._loader = loader
        self._lengths = dataset.inter_feat[dataset.item_list_length_field].numpy()
        self._list_fields = list_fields(dataset)
        self._length_field = dataset.item_list_length_field
        self.bucket, self.trim, self.per_target = bucket, trim, per_target
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    def _batch_ids(self, order: np.ndarray) -> np.ndarray:
        """The batch of each row of ``order`` (rows sorted by length)."""
        size = int(self._loader.step)
        if not self.per_target:
            return np.arange(len(order)) // size
        lengths = self._lengths[order]
        budget = size * float(self._lengths.mean())
        # A row joins the batch in which its first target falls: every batch holds about
        # ``budget`` targets, at least one row, and the count does not depend on the tie-breaks.
        starts = np.cumsum(lengths) - lengths
        return np.floor(starts / budget).astype(np.int64)

    def batches(self) -> list[np.ndarray]:
        """One epoch's index sets, in the order they are trained on."""
        n = len(self._lengths)
        if not self.bucket:
            if self._loader.shuffle:
                order = torch.randperm(n, generator=self.generator).numpy()
            else:
                order = np.arange(n)
            return np.array_split(order, np.arange(self._loader.step, n, self._loader.step))
        noise = torch.rand(n, generator=self.generator, dtype=torch.float64).numpy()
        order = np.lexsort((noise, self._lengths))  # by length; random among equal lengths
        ids = self._batch_ids(order)
        cuts = np.flatnonzero(np.diff(ids)) + 1
        groups = np.split(order, cuts)
        shuffled = torch.randperm(len(groups), generator=self.generator).tolist()
        return [groups[i] for i in shuffled]

    def __iter__(self) -> Any:
        for index in self.batches():
            batch = self._loader.collate_fn(index)
            if self.trim:
                batch = trim_to_longest(batch, self._list_fields, self._length_field)
            yield batch

    def __len__(self) -> int:
        n, size = len(self._lengths), int(self._loader.step)
        if n and self.bucket and self.per_target:
            return int(self._batch_ids(np.argsort(self._lengths, kind="stable"))[-1]) + 1
        return -(-n // size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _random_subset(n: int, limit: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=limit, replace=False)


def _rows_within(targets: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Random rows, in random order, whose ``targets`` add up to at most ``limit`` (at least
    one row)."""
    order = np.random.default_rng(seed).permutation(len(targets))
    kept = np.cumsum(targets[order]) <= limit
    kept[0] = True
    return order[kept]


def limit_samples(dataset: Any, limit: int, seed: int, targets: np.ndarray | None = None) -> None:
    """Keep a random subset of the rows holding about ``limit`` training targets: ``limit`` rows
    when each row is one target (RecBole's samples), else as many random rows as fit in
    ``limit`` of their ``targets`` (whole sequences, users' rows), at least one."""
    n = len(dataset.inter_feat)
    if not limit:
        return
    if targets is None:
        if n > limit:
            _keep_rows(dataset, _random_subset(n, limit, seed))
        return
    if int(targets.sum()) <= limit:
        return
    _keep_rows(dataset, _rows_within(targets, limit, seed))


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
    those items -inf as it does for general models. The matrix itself (users x items) is kept as
    ``loader.exclude_history_csr`` for evaluators that mask the scores themselves."""
    loader.exclude_history_csr = history
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


@dataclass(frozen=True)
class HeldOut:
    """The strong-generalization settings (``heldout_users``)."""

    valid: int
    test: int
    fold_in: float = 0.8
    seed: int = 0

    @classmethod
    def from_config(cls, value: Any) -> HeldOut | None:
        if not value:
            return None
        if not isinstance(value, dict) or not {"valid", "test"} <= set(value):
            raise ValueError("heldout_users must be a mapping with valid and test user counts")
        unknown = set(value) - {"valid", "test", "fold_in", "seed"}
        if unknown:
            raise ValueError(f"heldout_users has unknown key(s): {', '.join(sorted(unknown))}")
        heldout = cls(**value)
        if heldout.valid < 1 or heldout.test < 1 or not 0 < heldout.fold_in < 1:
            raise ValueError("heldout_users needs valid, test >= 1 and 0 < fold_in < 1")
        return heldout


def _setting(default: Any, changes_results: bool, meaning: str) -> Any:
    """A :class:`HarnessSettings` field; ``changes_results`` says whether two runs that differ
    only in it may compute different numbers (such keys are part of a run's config hash; the
    others say where or for how long a run executes)."""
    return field(default=default, metadata={"changes_results": changes_results, "help": meaning})


@dataclass(frozen=True)
class HarnessSettings:
    """The harness's own keys of a run, typed. Defaults are what an unset key meant before the
    keys were typed (RecBole's own behaviour), not ``configs/defaults.yaml``'s values."""

    train_regime: str = _setting(
        "interactions", True, "interactions (RecBole's samples) or users (whole sequences)"
    )
    train_sample_limit: int = _setting(0, True, "train on random rows of about this many targets")
    eval_user_limit: int = _setting(0, True, "evaluate a random subset of this many users")
    exclude_history_items: bool = _setting(
        False, True, "sequential models rank no item the user interacted with before"
    )
    heldout_users: HeldOut | None = _setting(None, True, "strong generalization")
    time_budget_s: float = _setting(0.0, False, "training seconds before the run stops; 0: none")
    threads: int = _setting(0, False, "PyTorch CPU threads; 0: the run's share of the cores")
    checkpoint_every_s: float = _setting(
        0.0, False, "also save a run's state inside an epoch this often (seconds); 0: never"
    )
    stopping_warmup_epochs: int = _setting(
        0, True, "early-stopping patience counts only from this epoch on"
    )
    bucket_by_length: bool = _setting(
        False, True, "sequential batches of similar lengths, each padded to its own longest"
    )
    # RecBole's values bit for bit, but another code path: kept among the keys that make a run.
    fast_evaluation: bool = _setting(True, True, "full ranking as one score matrix per batch")
    # Same distribution, another random stream: a key that makes a run.
    fast_dropout: bool = _setting(
        False, True, "dropout masks from torch.rand on the CPU (recbole_ext.layers.dropout)"
    )

    # The one key models read too (to choose their loss): it stays in RecBole's Config.
    MODEL_KEYS: ClassVar[frozenset[str]] = frozenset({"train_regime"})

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def placement_keys(cls) -> frozenset[str]:
        """The keys that do not change what a run computes (``changes_results`` false)."""
        return frozenset(
            f.name for f in dataclasses.fields(cls) if not f.metadata["changes_results"]
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HarnessSettings:
        """The harness keys of a merged config (other keys are ignored); an absent or null key
        takes its default. Raises ValueError for a value the key cannot take."""
        given = {k: values[k] for k in cls.keys() if k in values and values[k] is not None}
        try:
            settings = cls(
                train_regime=str(given.get("train_regime", "interactions")),
                train_sample_limit=int(given.get("train_sample_limit", 0)),
                eval_user_limit=int(given.get("eval_user_limit", 0)),
                exclude_history_items=bool(given.get("exclude_history_items", False)),
                heldout_users=HeldOut.from_config(given.get("heldout_users")),
                time_budget_s=float(given.get("time_budget_s", 0.0)),
                threads=int(given.get("threads", 0)),
                checkpoint_every_s=float(given.get("checkpoint_every_s", 0.0)),
                stopping_warmup_epochs=int(given.get("stopping_warmup_epochs", 0)),
                bucket_by_length=bool(given.get("bucket_by_length", False)),
                fast_evaluation=given.get("fast_evaluation", True) is not False,
                fast_dropout=bool(given.get("fast_dropout", False)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"harness setting: {exc}") from exc
        if settings.train_regime not in TRAIN_REGIMES:
            raise ValueError(
                f"train_regime must be one of {TRAIN_REGIMES}, not {settings.train_regime!r}"
            )
        non_negative = ("train_sample_limit", "eval_user_limit", "threads", "time_budget_s")
        for name in (*non_negative, "checkpoint_every_s"):
            if getattr(settings, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(settings, name)}")
        return settings

    @classmethod
    def from_config(cls, config: Any) -> HarnessSettings:
        """The harness keys a RecBole ``Config`` (or a plain mapping) holds: for scripts that
        build their own config with the keys in it."""
        values = {}
        for key in cls.keys():
            try:
                values[key] = config[key]  # RecBole's Config answers None for an unset key
            except KeyError:
                continue
        return cls.from_mapping(values)


def strong_generalization_split(dataset: Any, heldout: HeldOut) -> tuple[Any, Any, Any, Any]:
    """(train, fold-in history, valid, test) datasets of whole held-out users.

    ``train`` holds the training users only; ``history`` adds every held-out user's fold-in
    interactions (what the model encodes, and what the ranking excludes); ``valid`` and ``test``
    hold the held-out users' interactions to predict.
    """
    dataset._change_feat_format()
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].numpy()
    items = inter[dataset.iid_field].numpy()
    rng = np.random.default_rng(heldout.seed)
    all_users = np.unique(users)
    if heldout.valid + heldout.test >= len(all_users):
        raise ValueError(
            f"heldout_users asks for {heldout.valid} + {heldout.test} held-out users but the "
            f"dataset has {len(all_users)} users; some must remain for training"
        )
    shuffled = rng.permutation(all_users)
    valid_users = shuffled[: heldout.valid]
    test_users = shuffled[heldout.valid : heldout.valid + heldout.test]
    in_valid, in_test = np.isin(users, valid_users), np.isin(users, test_users)
    in_train = ~(in_valid | in_test)
    # Items no training user has cannot be scored by a model trained on the others.
    known_items = np.isin(items, np.unique(items[in_train]))
    # Each held-out user's interactions: a random fold_in share to encode, the rest to predict.
    order = np.lexsort((rng.random(len(users)), users))
    rank = np.empty(len(users), dtype=np.int64)
    starts = np.r_[0, np.nonzero(np.diff(users[order]))[0] + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank[order] = np.arange(len(users)) - np.repeat(starts, counts)
    per_user = np.bincount(users, minlength=dataset.user_num)[users]
    fold_in = rank < np.ceil(heldout.fold_in * per_user)
    heldout_rows = (in_valid | in_test) & known_items

    def subset(mask: np.ndarray) -> Any:
        return dataset.copy(inter[torch.as_tensor(np.nonzero(mask)[0])])

    train = subset(in_train)
    history = subset(in_train | (heldout_rows & fold_in))
    valid = subset(in_valid & known_items & ~fold_in)
    test = subset(in_test & known_items & ~fold_in)
    return train, history, valid, test


def fold_in(model: Any, history: Any) -> None:
    """Give a trained general model the held-out users' fold-in interactions to encode.

    Supported: a model's own ``fold_in(dataset)`` method; this package's ``UserHistory``
    modules; RecBole's autoencoders (MultiVAE, MultiDAE, RecVAE ...); EASE-like models that score
    ``interaction_matrix @ item_similarity``.
    """
    from recbole.model.abstract_recommender import AutoEncoderMixin

    from recbole_ext.layers.vae import UserHistory, binary_interaction_matrix

    if hasattr(model, "fold_in"):
        model.fold_in(history)
        return
    histories = [m for m in model.modules() if isinstance(m, UserHistory)]
    if histories:
        matrix = binary_interaction_matrix(history)
        for module in histories:
            module.set_matrix(matrix)
        return
    if isinstance(model, AutoEncoderMixin):
        model.build_histroy_items(history)
        return
    if hasattr(model, "interaction_matrix") and hasattr(model, "item_similarity"):
        model.interaction_matrix = history.inter_matrix(form="csr").astype(np.float32)
        return
    raise ValueError(
        f"{type(model).__name__} cannot encode held-out users: strong generalization needs a "
        "model that scores a user from its interactions at evaluation (an autoencoder, EASE, "
        "or a model with a fold_in(dataset) method)"
    )


@dataclass
class PreparedData:
    """The dataloaders of one run. ``model_dataset`` is the whole training split, which models
    are built from (the training batches may draw a subset of it: ``train_regime: users``,
    ``train_sample_limit``); ``fold_in`` is the history of held-out users, if any."""

    train: Any
    valid: Any
    test: Any
    model_dataset: Any
    fold_in: Any = None

    def __iter__(self) -> Any:
        return iter((self.train, self.valid, self.test))


def prepare_data(
    config: Any, dataset: Any, settings: HarnessSettings | None = None
) -> PreparedData:
    """Split and build the train / valid / test dataloaders, as RecBole's ``data_preparation``
    does, applying the harness's ``settings`` (module docstring) on the way; without them, the
    harness keys ``config`` holds."""
    if settings is None:
        settings = HarnessSettings.from_config(config)
    regime = settings.train_regime
    heldout = settings.heldout_users
    history_ds = None
    if heldout is not None:
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            raise ValueError("heldout_users (strong generalization) is for general models")
        train_ds, history_ds, valid_ds, test_ds = strong_generalization_split(dataset, heldout)
    else:
        train_ds, valid_ds, test_ds = dataset.build()
    sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    exclude_history = settings.exclude_history_items and sequential
    if exclude_history:
        histories = sequential_histories(train_ds, valid_ds)
    # The regime and the sample limit choose which rows the training batches draw; the model
    # is built from, and the samplers exclude, the whole training split.
    batch_ds = train_ds.copy(train_ds.inter_feat)
    targets = None  # training targets per row (None: one each)
    if regime == "users" and sequential:
        whole_sequence_windows(batch_ds)
        targets = batch_ds.inter_feat[batch_ds.item_list_length_field].numpy()
    elif regime == "users":
        one_sample_per_user(batch_ds)
        per_user = np.bincount(train_ds.inter_feat[train_ds.uid_field].numpy())
        targets = per_user[batch_ds.inter_feat[batch_ds.uid_field].numpy()]
    seed = int(config["seed"])
    limit_samples(batch_ds, settings.train_sample_limit, seed, targets)
    limit_users([valid_ds, test_ds], settings.eval_user_limit, seed)

    # The evaluation samplers exclude the items of earlier phases: with held-out users that is
    # the fold-in history, so the first phase is the history rather than the training set.
    built = [history_ds if history_ds is not None else train_ds, valid_ds, test_ds]
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:
        neg = config["train_neg_sample_args"]
        kg_sampler = KGSampler(dataset, neg["distribution"], neg["alpha"])
        train = KnowledgeBasedDataLoader(config, batch_ds, train_sampler, kg_sampler, shuffle=True)
    else:
        train = get_dataloader(config, "train")(
            config, batch_ds, train_sampler, shuffle=config["shuffle"]
        )
    if isinstance(train, UserDataLoader) and settings.train_sample_limit:
        # RecBole's autoencoders (MultiVAE, RecVAE ...) batch every user whatever the rows.
        per_user = np.bincount(
            train_ds.inter_feat[train_ds.uid_field].numpy(), minlength=dataset.user_num
        )
        train = UserSubsetBatches(train, per_user, settings.train_sample_limit, seed)
    if sequential and isinstance(train, TrainDataLoader):
        trim = accepts_trimmed_batches(type_of_model(config))
        bucket = settings.bucket_by_length
        if trim or bucket:
            train = LengthBucketedBatches(
                train, seed, bucket=bucket, trim=trim, per_target=regime == "users"
            )
    valid = get_dataloader(config, "valid")(config, valid_ds, valid_sampler, shuffle=False)
    test = get_dataloader(config, "test")(config, test_ds, test_sampler, shuffle=False)
    if exclude_history:
        for loader, history in zip((valid, test), histories, strict=True):
            if isinstance(loader, FullSortEvalDataLoader):
                _exclude_history(loader, history)
    return PreparedData(train, valid, test, train_ds, history_ds)
