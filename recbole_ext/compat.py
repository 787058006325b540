"""Make RecBole 1.2.1 work on today's NumPy, pandas, SciPy and PyTorch.

RecBole is unmaintained; each patch below fixes one failure seen on the current stack and has a
regression test in ``tests/test_compat.py``. Nothing is patched on import: :func:`apply` patches
RecBole, SciPy and NumPy process-wide, on purpose, and registers this package's metrics; the
entry points call it (the ``bench`` CLI, ``bench``'s Python API, Ray workers, the tests) before
any RecBole object is built. Code that uses ``recbole_ext`` with RecBole directly calls it first::

    from recbole_ext import compat
    compat.apply()

It refuses a RecBole other than the one it was written for (:data:`RECBOLE_VERSION`).

Never import ``recbole.quick_start`` from this package: it imports ``ray.tune`` at module import.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import torch

_applied = False

# The NumPy aliases RecBole still uses (np.float in its metrics, np.int in samplers ...) mapped to
# what they always meant: the Python builtins.
_NUMPY_ALIASES = {
    "bool": bool,
    "int": int,
    "float": float,
    "complex": complex,
    "object": object,
    "str": str,
    "long": int,
    "unicode": str,
}


RECBOLE_VERSION = "1.2.1"


class IncompatibleRecBole(RuntimeError):
    """The installed RecBole is not the version these patches were written for."""


def check_recbole_version() -> None:
    import recbole

    if recbole.__version__ != RECBOLE_VERSION:
        raise IncompatibleRecBole(
            f"recbole_ext's compatibility fixes are written for RecBole {RECBOLE_VERSION}, "
            f"but RecBole {recbole.__version__} is installed"
        )


def apply() -> None:
    """Apply every patch once, and register this package's metrics with RecBole."""
    global _applied
    if _applied:
        return
    check_recbole_version()
    apply_only(FIXES)
    from recbole_ext.metrics import register_metrics

    register_metrics()
    _applied = True


def applied() -> bool:
    return _applied


def apply_only(names: tuple[str, ...] | list[str]) -> None:
    """Apply the named patches only (benchmarks measure stock RecBole with the crash fixes
    alone)."""
    unknown = sorted(set(names) - set(FIXES))
    if unknown:
        raise ValueError(f"unknown compat fix(es) {unknown}; known: {list(FIXES)}")
    for name in names:
        FIXES[name]()


# 1. NumPy 2 removed np.float_ and friends; RecBole's Config assigns np.float = np.float_.
def _patch_numpy_aliases() -> None:
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _compatibility_settings(self: Any) -> None:
    _patch_numpy_aliases()


def _patch_numpy_aliases_and_config() -> None:
    """Fix 1 on its own: the aliases, and Config.compatibility_settings no longer assigning the
    removed ``np.float_`` (what stock RecBole needs; the other Config patches are in 6 and 8)."""
    from recbole.config import configurator

    _patch_numpy_aliases()
    configurator.Config.compatibility_settings = _compatibility_settings


# 6. Config reads every --key=value from sys.argv; 8. it overwrites CUDA_VISIBLE_DEVICES.
def _patch_config() -> None:
    from recbole.config import configurator

    original_init_device = configurator.Config._init_device

    def _load_cmd_line(self: Any) -> dict:
        # The harness passes every setting explicitly; the process's own argv is not RecBole's.
        return {}

    def _init_device(self: Any) -> None:
        cfg = self.final_config_dict
        if "local_rank" in cfg:  # distributed runs keep RecBole's behaviour
            original_init_device(self)
            return
        gpu_id = cfg.get("gpu_id", "")
        if isinstance(gpu_id, tuple | list):
            gpu_id = ",".join(map(str, gpu_id))
        cfg["gpu_id"] = str(gpu_id)
        cfg["single_spec"] = True
        cfg["local_rank"] = 0
        requested = cfg.get("device")
        # The process's CUDA_VISIBLE_DEVICES (set by the harness, Ray or the user) is left alone.
        if isinstance(requested, torch.device | str) and str(requested) not in ("", "auto"):
            device = torch.device(requested)
        elif cfg.get("use_gpu", True) and torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            device = torch.device("cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        cfg["device"] = device

    configurator.Config.compatibility_settings = _compatibility_settings
    configurator.Config._load_cmd_line = _load_cmd_line
    configurator.Config._init_device = _init_device


# 4. pandas 3 copy-on-write: chained ``df[col].fillna(..., inplace=True)`` is a silent no-op.
def _patch_dataset_fillna() -> None:
    from recbole.data.dataset import dataset as dataset_module
    from recbole.utils import FeatureType

    def _fill_nan(self: Any) -> None:
        for feat_name in self.feat_name_list:
            feat = getattr(self, feat_name)
            for field in feat:
                ftype = self.field2type[field]
                if ftype == FeatureType.TOKEN:
                    feat[field] = feat[field].fillna(value=0)
                elif ftype == FeatureType.FLOAT:
                    feat[field] = feat[field].fillna(value=feat[field].mean())
                else:
                    dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                    feat[field] = feat[field].apply(
                        lambda x, dtype=dtype: (
                            np.array([], dtype=dtype) if isinstance(x, float) else x
                        )
                    )

    dataset_module.Dataset._fill_nan = _fill_nan
    dataset_module.Dataset._remap = _remap
    _patch_load_feat_seq_fillna(dataset_module)


# 10. pandas 3: ``Series.agg(len)`` is the Series' length, not each cell's, so RecBole's
# ``Dataset._remap`` split every token_seq column into one piece and crashed.
def _remap(self: Any, remap_list: list) -> None:
    import pandas as pd
    from recbole.utils import FeatureType

    if not remap_list:
        return
    tokens, split_point = self._concat_remaped_tokens(remap_list)
    new_ids, mapping = pd.factorize(tokens)
    new_ids_list = np.split(new_ids + 1, split_point)
    id2token = np.array(["[PAD]", *mapping])
    token2id = {token: i for i, token in enumerate(id2token)}
    for (feat, field, ftype), ids in zip(remap_list, new_ids_list, strict=True):
        if field not in self.field2id_token:
            self.field2id_token[field] = id2token
            self.field2token_id[field] = token2id
        if ftype == FeatureType.TOKEN:
            feat[field] = ids
        elif ftype == FeatureType.TOKEN_SEQ:
            feat[field] = pd.Series(_split_by_cells(ids, feat[field]), index=feat.index)


def _cell_lengths(column: Any) -> np.ndarray:
    """Each cell's length in a sequence column: what ``Series.agg(len)`` gave before pandas 3."""
    return np.fromiter((len(cell) for cell in column), dtype=np.int64, count=len(column))


def _split_by_cells(values: np.ndarray, column: Any) -> list[np.ndarray]:
    """``values`` (one entry per element of ``column``'s cells, in order) cut back into cells."""
    return np.split(values, np.cumsum(_cell_lengths(column))[:-1])


def _patch_load_feat_seq_fillna(dataset_module: Any) -> None:
    """Make the empty cells of *_seq columns read as "" rather than NaN.

    ``Dataset._load_feat`` calls ``df[field].fillna(value="", inplace=True)`` on a column view,
    which pandas 3 ignores; the NaN cell then reaches ``str.split`` and crashes. The method's
    DataFrame comes from ``pd.read_csv`` in the same module, with the atomic file's header
    (``name:token_seq``) as column names, so the module's ``pd`` is given a ``read_csv`` that
    fills the sequence columns itself.
    """
    import types

    import pandas as pd

    def read_csv(*args: Any, **kwargs: Any) -> pd.DataFrame:
        df = pd.read_csv(*args, **kwargs)
        for column in df.columns:
            if str(column).endswith("_seq"):
                df[column] = df[column].fillna("")
        return df

    shim = types.ModuleType("pandas_recbole_shim")
    shim.__dict__.update(pd.__dict__)
    shim.read_csv = read_csv
    dataset_module.pd = shim


# 13. pandas 3: the same ``Series.agg(len)`` (see 10) sits in four more RecBole methods. With
# pre-split files (``benchmark_filename``) SequentialDataset._benchmark_presets gave every row's
# item_list_length the number of rows, not its own sequence's length, so models trained and were
# evaluated on wrong lengths without any error. The other three crashed: min-max normalisation
# (``normalize_field`` / ``normalize_all``) and discretisation / ``numerical_features`` of
# float_seq fields, and a knowledge-graph dataset remapping a token_seq item or entity field
# (e.g. ``item_id_list`` of pre-split files for GRU4RecKG / KSR). Each method is rewritten with
# per-cell lengths and otherwise RecBole's behaviour (two changes where stock could not run: a
# constant float_seq field normalises to ones like a constant float field, and a discretisation
# setting for a non-float field is dropped with RecBole's warning instead of a dictionary error).
def _benchmark_presets(self: Any) -> None:
    from recbole.utils import FeatureSource, FeatureType

    list_suffix = self.config["LIST_SUFFIX"]
    for field in self.inter_feat:
        if field + list_suffix in self.inter_feat:
            setattr(self, f"{field}_list_field", field + list_suffix)
    self.set_field_property(
        self.item_list_length_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1
    )
    item_lists = self.inter_feat[self.item_id_list_field]
    self.inter_feat[self.item_list_length_field] = _cell_lengths(item_lists)


def _reset_ent_remap_id(
    self: Any, field: str, idmap: np.ndarray, id2token: np.ndarray, token2id: dict
) -> None:
    from recbole.utils import FeatureType

    self.field2id_token[field] = id2token
    self.field2token_id[field] = token2id
    for feat in self.field2feats(field):
        if self.field2type[field] == FeatureType.TOKEN:
            feat[field] = idmap[feat[field].values]
        else:
            new_ids = idmap[np.concatenate(list(feat[field]))]
            feat[field] = _split_by_cells(new_ids, feat[field])


def _min_max_scaled(self: Any, values: np.ndarray, field: str) -> np.ndarray:
    high, low = values.max(), values.min()
    if high == low:
        self.logger.warning(f"All the same value in [{field}].")
        return np.ones_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def _normalize(self: Any) -> None:
    from recbole.utils import FeatureType

    floats = (FeatureType.FLOAT, FeatureType.FLOAT_SEQ)
    if self.config["normalize_field"] is not None and self.config["normalize_all"] is True:
        raise ValueError("Normalize_field and normalize_all can't be set at the same time.")
    if self.config["normalize_field"]:
        fields = self.config["normalize_field"]
        for field in fields:
            if field not in self.field2type:
                raise ValueError(f"Field [{field}] does not exist.")
            if self.field2type[field] not in floats:
                self.logger.warning(
                    f"{field} is not a FLOAT/FLOAT_SEQ feat, which will not be normalized."
                )
    elif self.config["normalize_all"]:
        fields = self.float_like_fields
    else:
        return
    for field in fields:
        ftype = self.field2type[field]
        for feat in self.field2feats(field):
            if ftype == FeatureType.FLOAT:
                feat[field] = _min_max_scaled(self, feat[field].values, field)
            elif ftype == FeatureType.FLOAT_SEQ:
                values = np.concatenate(list(feat[field]))
                feat[field] = _split_by_cells(_min_max_scaled(self, values, field), feat[field])


def _bucketed(
    self: Any, values: np.ndarray, method: str, bucket: int | None, field: str
) -> tuple[np.ndarray, int]:
    """RecBole's discretisation of one field's values: (bucket ids, number of buckets)."""
    if method == "ED":  # equal-width buckets 1 .. bucket
        lower, upper = values.min(), values.max() + 1e-9
        if upper != lower:
            values = np.floor((values - lower) * bucket / (upper - lower) + 1)
        else:
            self.logger.warning(f"All the same value in [{field}].")
            values = np.ones_like(values) * bucket
    elif method == "LD":  # values up to 2 kept, larger ones by squared log, then ranked
        above_two = values > 2
        log_bucket = np.floor(np.log(values * above_two + 1e-9) ** 2 + 1)
        _, values = np.unique(np.where(above_two, log_bucket, values), return_inverse=True)
    else:
        raise ValueError(f"Method [{method}] does not exist.")
    return values, int(values.max() + 1)


def _discretization(self: Any) -> None:
    from recbole.utils import FeatureType

    floats = (FeatureType.FLOAT, FeatureType.FLOAT_SEQ)
    dis_info = dict(self.config["discretization"] or {})
    for field in list(dis_info):
        if field not in self.field2type:
            raise ValueError(f"Field [{field}] does not exist.")
        if field not in self.config["numerical_features"]:
            raise ValueError(f"Field [{field}] must be a numerical feature")
        if self.field2type[field] not in floats:
            self.logger.warning(
                f"{field} is not a FLOAT/FLOAT_SEQ feat, which will not be normalized."
            )
            del dis_info[field]

    for field in self.config["numerical_features"]:
        ftype = self.field2type[field]
        info = dis_info.get(field)
        if info is not None and info["method"] == "ED" and "bucket" not in info:
            raise ValueError("The number of buckets must be set when apply equal discretization.")
        for feat in self.field2feats(field):
            if ftype == FeatureType.FLOAT:
                values = feat[field].values
            else:
                values = np.concatenate(list(feat[field]))
            # Each value becomes (embedding scale, embedding index): (1, bucket id) when the
            # field is discretised, (value, 1) when not.
            if info is None:
                scale, index = values, np.ones_like(values)
            else:
                index, self.field2bucketnum[field] = _bucketed(
                    self, values, info["method"], info.get("bucket"), field
                )
                scale = np.ones_like(index)
            if ftype == FeatureType.FLOAT:
                feat[field] = np.stack([scale, index], axis=-1).tolist()
            else:
                scales = _split_by_cells(scale, feat[field])
                indices = _split_by_cells(index, feat[field])
                feat[field] = list(zip(scales, indices, strict=True))


# Fix 13's rewrites by (RecBole module, class, method).
_PER_CELL_LENGTH_METHODS = {
    ("recbole.data.dataset.sequential_dataset", "SequentialDataset", "_benchmark_presets"): (
        _benchmark_presets
    ),
    ("recbole.data.dataset.dataset", "Dataset", "_normalize"): _normalize,
    ("recbole.data.dataset.dataset", "Dataset", "_discretization"): _discretization,
    ("recbole.data.dataset.kg_dataset", "KnowledgeBasedDataset", "_reset_ent_remapID"): (
        _reset_ent_remap_id
    ),
}


def _patch_seq_lengths() -> None:
    for (module_name, class_name, method), rewrite in _PER_CELL_LENGTH_METHODS.items():
        setattr(getattr(importlib.import_module(module_name), class_name), method, rewrite)


# 5. SciPy >= 1.13 removed dok_matrix._update, which NGCF, LightGCN, NCL, GCMC ... call.
def _patch_scipy_dok_update() -> None:
    import scipy.sparse as sp

    def _update(self: Any, data: Mapping) -> None:
        # Same contract as the removed private method: a raw dict update, no bounds checks.
        self._dict.update(data)

    for cls in (sp.dok_matrix, getattr(sp, "dok_array", None)):
        if cls is not None and not hasattr(cls, "_update"):
            cls._update = _update


def unique_run_stamp() -> str:
    """A checkpoint stamp unique across processes and within a second."""
    now = datetime.now().strftime("%b-%d-%Y_%H-%M-%S-%f")
    return f"{now}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _checkpoint_state(trainer: Any, epoch: int, optimizer: bool = True) -> dict:
    from recbole_ext.run_state import tensor_values

    # Plain containers and tensors only, so that torch.load(weights_only=True) accepts it.
    state = {
        "model": str(trainer.config["model"]),
        "epoch": int(epoch),
        "cur_step": int(trainer.cur_step),
        "best_valid_score": float(trainer.best_valid_score),
        "state_dict": trainer.model.state_dict(),
        "other_parameter": tensor_values(trainer.model.other_parameter()),
    }
    if optimizer:
        state["optimizer"] = trainer.optimizer.state_dict()
    return state


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by the patched trainer, refusing arbitrary pickled objects."""
    return torch.load(path, map_location=device, weights_only=True)


# 2. torch >= 2.6 loads weights_only; RecBole's checkpoints pickle the Config.
# 7. checkpoint names are model + time to the second; parallel runs overwrite each other.
def _patch_trainer() -> None:
    from recbole.trainer import trainer as trainer_module

    trainer_module.get_local_time = unique_run_stamp
    Trainer = trainer_module.Trainer
    original_evaluate = Trainer.evaluate

    def _save_checkpoint(self: Any, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        from recbole_ext.run_state import save

        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        # A trainer that keeps a resumable "last" checkpoint (the harness's) needs only the best
        # weights here: the optimizer state doubled or tripled every committed checkpoint.
        optimizer = not getattr(self, "best_weights_only", False)
        state = _checkpoint_state(self, epoch, optimizer=optimizer)
        save(saved_model_file, state)  # atomic: a kill leaves the old one
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def resume_checkpoint(self: Any, resume_file: str | os.PathLike) -> None:
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, self.device)
        if checkpoint["model"].lower() != str(self.config["model"]).lower():
            raise ValueError(
                f"checkpoint {resume_file} holds {checkpoint['model']}, not {self.config['model']}"
            )
        if "optimizer" not in checkpoint:  # refused before the trainer or model is touched
            raise ValueError(
                f"checkpoint {resume_file} holds the best weights only; resume from the run's "
                "last checkpoint (bench run --resume) instead"
            )
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])

    def evaluate(
        self: Any,
        eval_data: Any,
        load_best_model: bool = True,
        model_file: str | None = None,
        show_progress: bool = False,
    ) -> Any:
        if eval_data and load_best_model:
            checkpoint = load_checkpoint(model_file or self.saved_model_file, self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
        return original_evaluate(
            self, eval_data, load_best_model=False, show_progress=show_progress
        )

    def save_pretrained_model(self: Any, epoch: int, saved_model_file: str) -> None:
        state = _checkpoint_state(self, epoch)
        del state["best_valid_score"]  # pre-training does not validate
        torch.save(state, saved_model_file)
        self.saved_model_file = saved_model_file

    trainer_module.PretrainTrainer.save_pretrained_model = save_pretrained_model
    Trainer._save_checkpoint = _save_checkpoint
    Trainer.resume_checkpoint = resume_checkpoint
    Trainer.evaluate = evaluate


class _NullSummaryWriter:
    """Accepts and drops every TensorBoard call."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


# 9. Every Trainer opens a TensorBoard writer under ./log_tensorboard of the working directory.
# The harness keeps its own per-epoch records, so the trainers get a writer that drops events.
def _patch_tensorboard() -> None:
    from recbole.trainer import trainer as trainer_module

    trainer_module.get_tensorboard = lambda logger: _NullSummaryWriter()


# 3. recbole/model/sequential_recommender/sine.py runs torch.autograd.set_detect_anomaly(True) at
# import, and the package __init__ imports it with every sequential model.
def _import_sequential_models_without_anomaly_detection() -> None:
    was_enabled = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(was_enabled)


# 11. TransRec.full_sort_predict repeats the item table per user and subtracts: four
# [users, items, embedding] tensors per evaluation batch, 12.7 GB each for 4,096 Beauty users over
# 12,101 items at width 64, so a full-ranking evaluation is killed for memory. The same distances
# come from torch.cdist without the per-pair tensor ([users, items] only).
def _transrec_full_sort_predict(self: Any, interaction: Any) -> torch.Tensor:
    user_translation = self.forward(
        interaction[self.USER_ID], interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
    )
    distance = torch.cdist(
        user_translation, self.item_embedding.weight, compute_mode="donot_use_mm_for_euclid_dist"
    )
    return self.bias.weight.view(1, -1) - distance  # [users, items]


def _patch_transrec_full_sort() -> None:
    from recbole.model.sequential_recommender.transrec import TransRec

    TransRec.full_sort_predict = _transrec_full_sort_predict


# Every patch by name, in the order apply() runs them. Stock RecBole 1.2.1 needs "numpy_aliases"
# to start at all on NumPy 2; "dataset_fillna" only for data with empty cells or token_seq
# columns, "scipy_dok_update" only for graph models (NGCF, LightGCN ...), "tensorboard" only where
# the tensorboard package is missing, "seq_lengths" for normalised or numerical float_seq fields
# and token_seq fields of knowledge-graph datasets (and it corrects pre-split sequence lengths).
# The rest fix wrong or slow behaviour (command-line flags and CUDA_VISIBLE_DEVICES taken over by
# Config, unloadable and clashing checkpoints, TensorBoard files, anomaly detection left on for
# the whole process, TransRec's full ranking running out of memory). Pop's undercounted popularity
# changes a benchmarked model's results, so it is not patched here: recbole_ext/models/pop.py
# replaces RecBole's Pop through the registry.
FIXES = {
    "numpy_aliases": _patch_numpy_aliases_and_config,
    "config": _patch_config,
    "dataset_fillna": _patch_dataset_fillna,
    "scipy_dok_update": _patch_scipy_dok_update,
    "trainer": _patch_trainer,
    "tensorboard": _patch_tensorboard,
    "no_anomaly_detection": _import_sequential_models_without_anomaly_detection,
    "transrec_full_sort": _patch_transrec_full_sort,
    "seq_lengths": _patch_seq_lengths,
}
