"""The CPU training path, before and after, on this CPU alone: seconds per epoch and per full
validation, peak memory, and a floating-point lower bound per epoch with the ratio to it.

For every (dataset, model, variant) of the plan (``PLAN``, filtered by ``--datasets`` and
``--models``; a dataset outside it runs every selected model), each in a fresh subprocess with a
wall-clock limit (``--time-limit``) and ``--threads`` PyTorch threads:

- **after**: the harness's defaults, built as ``bench.runner.execute`` builds a run
  (``prepare(RunOptions(...))``, ``Config``, ``load_dataset`` with the cache of ``--cache-dir``,
  ``prepare_data``, the model, ``recording_trainer``).
- **before**: RecBole's own path, built the same way with, on top (``BEFORE``): RecBole's
  built-in class swapped in where one of ours shadows it; ``train_regime: interactions`` (one
  sample per prefix) for the models that now default to whole sequences; ``bucket_by_length:
  false`` and the training loader unwrapped from ``LengthBucketedBatches`` (every batch keeps
  ``MAX_ITEM_LIST_LENGTH`` columns); ``fast_evaluation: false`` (RecBole's evaluator);
  ``fast_dropout: false`` (PyTorch's dropout, as every row measured before that key existed);
  glibc's malloc as it comes (``bench.allocator`` not applied: the after side keeps freed memory
  as ``bench run`` does, since 2026-12-04; rows measured before then had glibc's defaults too).

Measured per stage (S3Rec: a pre-training epoch and a fine-tuning epoch):

- seconds per epoch: ``--max-batches`` batches timed after ``WARMUP_BATCHES`` untimed ones, from
  one request of the trainer's ``_train_epoch`` for a batch to the next (collation included);
  their mean times the number of batches projects the epoch (batches come in random order).
  When that projection is below ``--full-epoch-below`` seconds a whole epoch is run and timed
  instead, except for the (dataset, variant) pairs of ``ALWAYS_PROJECTED``;
- seconds per full validation: one ``trainer._valid_epoch(valid)`` over every validation user;
- peak memory (``bench.memory.PeakMemory``: the process's peak resident set) of the training
  and of the validation phase;
- a lower bound on the floating-point work of one training epoch, from the model's sizes and the
  data's real (unpadded) positions (:func:`flop_bound`, formulas in ``FORMULAS``), and the ratio
  measured seconds / (bound / the machine's dense fp32 ``torch.mm`` rate, measured with the same
  threads at the start and at the end of the run).

Writes ``<out>/cpu_training.json`` (every raw figure, the machine, the command, the commit) and
``<out>/cpu_training.md``. Commands in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` and ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

from bench.io import write_text  # noqa: E402
from benchmarks.common import (  # noqa: E402
    command_line,
    fmt,
    machine_info,
    markdown_table,
    median,
    ratio,
    run_worker_process,
    usable_cores,
    write_report,
)

SCHEMA = 1
STEM = "cpu_training"
VARIANTS = ("before", "after")
WARMUP_BATCHES = 2

SEQUENCE_AND_GRAPH_MODELS = (
    "SASRec", "GRU4Rec", "NARM", "BERT4Rec", "SLIME4Rec", "S3Rec", "ContrastVAE",
    "HybridContrastVAE", "LightGCN",
)  # fmt: skip
AUTOENCODERS = ("MultVAE", "HVampGated")
# Which models run on which dataset (ml-1m-strong holds out whole users: general models only).
PLAN: dict[str, tuple[str, ...]] = {
    "amazon-beauty": SEQUENCE_AND_GRAPH_MODELS,
    "ml-1m": SEQUENCE_AND_GRAPH_MODELS,
    "ml-1m-strong": AUTOENCODERS,
}
# ml-1m's per-prefix epochs are long: its "before" is always projected from the timed batches.
ALWAYS_PROJECTED = frozenset({("ml-1m", "before")})

DEFAULTS = {
    "max_batches": 20,
    "full_epoch_below": 300.0,
    "time_limit": 1800.0,
    "matmul_size": 4096,
    "matmul_repeats": 5,
}
# --quick: a smoke run on ml-100k (ships with RecBole) that takes seconds per worker.
QUICK = {
    "datasets": ("ml-100k",),
    "models": ("SASRec", "LightGCN"),
    "max_batches": 3,
    "full_epoch_below": 10.0,
    "time_limit": 300.0,
    "matmul_size": 1024,
    "matmul_repeats": 3,
}


# --- the variants ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Before:
    """How a model's "before" differs from its "after", beyond ``BEFORE_SETTINGS``."""

    recbole_class: bool = True  # swap in RecBole's built-in class of the same name, if ours shadows
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""


# Every "before": no length bucketing, the unwrapped loader (no trimming), RecBole's evaluation.
BEFORE_SETTINGS: dict[str, Any] = {
    "bucket_by_length": False,
    "fast_evaluation": False,
    "fast_dropout": False,
}
_PER_PREFIX = {"train_regime": "interactions"}
BEFORE: dict[str, Before] = {
    "SASRec": Before(settings=_PER_PREFIX),
    "GRU4Rec": Before(settings=_PER_PREFIX),
    "NARM": Before(settings=_PER_PREFIX),
    # RecBole's BERT4Rec masks in its dataloaders (training and evaluation): its own transform.
    "BERT4Rec": Before(settings={**_PER_PREFIX, "transform": "mask_itemseq"}),
    "S3Rec": Before(
        recbole_class=False,
        settings=_PER_PREFIX,
        note="RecBole's S3Rec cannot be built without an item-attribute field, which these "
        "datasets lack: ours under train_regime interactions (RecBole's per-prefix samples; its "
        "pre-training data are drawn vectorised and each batch trimmed to its longest sequence, "
        "where RecBole loops in Python at full width, so this before is faster than RecBole's)",
    ),
    "SLIME4Rec": Before(note="per prefix in both variants"),
    "ContrastVAE": Before(note="whole sequences in both variants"),
    "HybridContrastVAE": Before(note="whole sequences in both variants"),
    "LightGCN": Before(),
    "NGCF": Before(),
    "MultVAE": Before(note="training identical in both variants: only the evaluation differs"),
    "HVampGated": Before(note="training identical in both variants: only the evaluation differs"),
}


def before_spec(model: str) -> Before:
    """``BEFORE[model]``; a model not listed gets RecBole's class (if ours shadows one) and the
    common settings."""
    return BEFORE.get(model, Before())


# --- the plan ----------------------------------------------------------------------------------
def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def plan_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One job per (dataset, model, variant), in that order."""
    datasets = _names(args.datasets) or list(QUICK["datasets"] if args.quick else PLAN)
    chosen = _names(args.models)
    if chosen is None and args.quick:
        chosen = list(QUICK["models"])
    variants = _names(args.variants) or list(VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    everything = list(dict.fromkeys(m for models in PLAN.values() for m in models))
    jobs = []
    for dataset in datasets:
        if dataset in PLAN:
            models = [m for m in PLAN[dataset] if chosen is None or m in chosen]
        else:
            models = chosen if chosen is not None else everything
        for model in models:
            for variant in variants:
                jobs.append(
                    {
                        "kind": "measure",
                        "dataset": dataset,
                        "model": model,
                        "variant": variant,
                        "max_batches": args.max_batches,
                        "warmup_batches": WARMUP_BATCHES,
                        "full_epoch_below": args.full_epoch_below,
                        "allow_full_epoch": (dataset, variant) not in ALWAYS_PROJECTED,
                        "threads": args.threads,
                        "data_dir": args.data_dir,
                        "cache_dir": str(Path(args.cache_dir).resolve()),
                        "settings": {},
                    }
                )
    return jobs


# --- floating-point lower bounds ------------------------------------------------------------------
@dataclass
class TrainingData:
    """What a bound reads of one epoch's training data (the regime actually run)."""

    rows: int  # training samples (prefixes, windows, users, interactions)
    batches: int
    n_users: int
    n_items: int
    lengths: np.ndarray | None = None  # each row's real (unpadded) positions (sequential)
    max_length: int | None = None  # MAX_ITEM_LIST_LENGTH
    interactions: int | None = None  # the training split's user-item pairs (general)
    row_nnz: int | None = None  # sum over the rows of their user's training interactions

    @property
    def mean_batch(self) -> float:
        return self.rows / max(self.batches, 1)

    @property
    def positions(self) -> float:
        return float(np.sum(self.lengths, dtype=np.float64))


# The formula of each bound, for the report (forward MACs; the bound is MACs x 2 x 3).
FORMULAS: dict[str, str] = {
    "transformer": "Transformer layer over a sequence of n real positions: n (4H^2 + 2 H inner) + "
    "attention H n (n + 1) causal (H (n + 1) a position: QK^T and AV over the t <= n keys) or "
    "2 H n^2 bidirectional",
    "output": "output at a scored position: H V for full-softmax CE (V = the item table's rows), "
    "2H for BCE / BPR with one negative, H (1 + N) for a sampled softmax with N negatives",
    "regime": "per prefix (train_regime interactions): every prefix's real positions through the "
    "encoder, the output at its last position only; whole sequence (users): every real position "
    "through both; B = rows / batches (mean batch), InfoNCE 4 B^2 H per batch and contrast term",
    "SASRec": "n_layers Transformer layers (causal) + output",
    "GRU4Rec": "GRU 3 (E Hd + Hd^2) a position (3 (2 Hd^2) for each further layer) + dense Hd E "
    "and output E V at each scored position",
    "NARM": "GRU as GRU4Rec + A1 Hd^2 a position; at each scored position t: A2 Hd^2, attention "
    "2 Hd t, B 2 Hd E, output E V",
    "BERT4Rec": "n_layers bidirectional layers over min(n + 1, W) positions (whole: window + next "
    "item) or n (per prefix); at the expected masked positions ft_ratio + (1 - ft_ratio) "
    "mask_ratio n a sequence: output_ffn H^2 + output H V",
    "SLIME4Rec": "passes x n_layers x feed-forward 2 H inner a position (the FFT filters are not "
    "dense products: left out); passes = 1 + dropout pass + semantic positive per contrast mode "
    "(us_x: 3, its positive taken as long as its anchor); output H V at the last position; InfoNCE",
    "S3Rec": "pre-training: 4 bidirectional encoder passes (masked sequence, masked segment, "
    "positive and negative segment) over min(n + 1, W) (whole) or n positions, MIP head "
    "(H^2 + 2H) at mask_ratio of them, SP head 2H^2 + 2H a sequence; fine-tuning: causal encoder + "
    "output, as SASRec",
    "ContrastVAE": "(encoder passes + decoder passes) x n_layers causal Transformer layers: "
    "encoders mu and logvar once (shared pass, MA/VA) or twice, decoder once per branch (2); "
    "output per branch at every real position; InfoNCE",
    "HybridContrastVAE": "branch 1: heads (2 Gaussian, 1 Dirichlet) x n_layers causal Transformer "
    "layers; branch 2: heads x filter_n_layers x 2 H inner a position (filters left out); "
    "decoder once per branch; output per branch at every real position; InfoNCE",
    "LightGCN": "per batch: n_layers x nnz x D propagation (nnz = 2 x training interactions, the "
    "symmetric graph) + 2 D a row (BPR scores)",
    "NGCF": "per batch, a layer: nnz x d_in + 2 (n_users + n_items) d_in d_out; + 2 sum(d) a row",
    "autoencoder": "every Linear layer once a row (user): in x out, the n_items-wide input layers "
    "counted on the user's non-zeros (nnz x out); VampPrior models: per batch the encoder q(z|x) "
    "on K dense pseudo-inputs + 2 B K z for the mixture log-density",
}


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for RecBole's Config (None when unset) and plain mappings alike."""
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


def transformer_macs(
    lengths: np.ndarray, hidden: int, inner: int, layers: int, causal: bool
) -> float:
    """Forward MACs of ``layers`` Transformer layers over sequences of ``lengths`` real positions
    (``FORMULAS["transformer"]``)."""
    n = np.asarray(lengths, dtype=np.float64)
    dense = (4 * hidden**2 + 2 * hidden * inner) * n.sum()
    attention = hidden * (n * (n + 1)).sum() if causal else 2 * hidden * (n * n).sum()
    return float(layers * (dense + attention))


def output_macs(config: Any, width: int, n_items: int) -> float:
    """MACs of the output layer at one scored position (``FORMULAS["output"]``)."""
    negatives = int(_cfg(config, "sampled_negatives", 0))
    if str(_cfg(config, "loss_type", "CE")).upper() == "BPR":
        return 2.0 * width
    return float(width * (1 + negatives) if negatives else width * n_items)


def _transformer_sizes(config: Any) -> tuple[int, int, int]:
    """(hidden_size, inner_size, n_layers)."""
    return int(config["hidden_size"]), int(config["inner_size"]), int(config["n_layers"])


def _whole(model: Any) -> bool:
    return bool(getattr(model, "whole_sequence", False))


def _info_nce(data: TrainingData, hidden: int, terms: int = 1) -> float:
    # Sum over batches of 4 B_b^2 H is at least 4 rows (rows / batches) H (Jensen).
    return 4.0 * terms * data.rows * data.mean_batch * hidden


def _sasrec(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    h, inner, layers = _transformer_sizes(config)
    scored = data.positions if _whole(model) else data.rows
    return {
        "encoder": transformer_macs(data.lengths, h, inner, layers, causal=True),
        "output": scored * output_macs(config, h, int(model.n_items)),
    }


def _gru(config: Any, data: TrainingData, layers_key: str) -> float:
    e, hd = int(config["embedding_size"]), int(config["hidden_size"])
    layers = int(_cfg(config, layers_key, 1))
    return data.positions * 3.0 * ((e * hd + hd * hd) + (layers - 1) * 2 * hd * hd)


def _gru4rec(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    e, hd = int(config["embedding_size"]), int(config["hidden_size"])
    scored = data.positions if _whole(model) else data.rows
    return {
        "gru": _gru(config, data, "num_layers"),
        "dense": scored * hd * e,
        "output": scored * output_macs(config, e, int(model.n_items)),
    }


def _narm(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    e, hd = int(config["embedding_size"]), int(config["hidden_size"])
    n = np.asarray(data.lengths, dtype=np.float64)
    if _whole(model):
        scored, attention = data.positions, hd * float((n * (n + 1)).sum())
    else:  # the last position t = n of each prefix attends over its n states
        scored, attention = data.rows, 2.0 * hd * data.positions
    return {
        "gru": _gru(config, data, "n_layers"),
        "a1": data.positions * hd * hd,
        "attention": attention,
        "a2_and_b": scored * (hd * hd + 2 * hd * e),
        "output": scored * output_macs(config, e, int(model.n_items)),
    }


def _with_next_item(model: Any, data: TrainingData) -> np.ndarray:
    """The sequences a cloze model encodes: window + next item (at most W) under whole
    sequences, the prefix itself otherwise."""
    n = np.asarray(data.lengths, dtype=np.int64)
    return np.minimum(n + 1, int(data.max_length)) if _whole(model) else n


def _bert4rec(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    h, inner, layers = _transformer_sizes(config)
    m = _with_next_item(model, data)
    ft, mask_ratio = float(_cfg(config, "ft_ratio", 0.0)), float(config["mask_ratio"])
    masked = float(np.sum(ft + (1 - ft) * mask_ratio * m.astype(np.float64)))
    return {
        "encoder": transformer_macs(m, h, inner, layers, causal=False),
        "output": masked * (h * h + output_macs(config, h, int(model.n_items))),
    }


_SLIME_PASSES = {"us_x": (3, 1), "us": (3, 2), "un": (2, 1), "su": (2, 1), "none": (1, 0)}


def _slime4rec(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    h, inner, layers = _transformer_sizes(config)
    passes, contrast_terms = _SLIME_PASSES[str(config["contrast"])]
    return {
        "encoder": passes * layers * 2.0 * h * inner * data.positions,
        "output": data.rows * output_macs(config, h, int(model.n_items)),
        "info_nce": _info_nce(data, h, contrast_terms),
    }


def _s3rec(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    h, inner, layers = _transformer_sizes(config)
    if str(config["train_stage"]) == "pretrain":
        m = _with_next_item(model, data)
        return {
            "encoder": 4 * transformer_macs(m, h, inner, layers, causal=False),
            "mip": float(config["mask_ratio"]) * float(m.sum()) * (h * h + 2 * h),
            "sp": data.rows * (2.0 * h * h + 2 * h),
        }
    return _sasrec(model, config, data)


def _latent_output(model: Any, config: Any, hidden: int) -> float:
    if str(config["rec_loss"]) == "ce":
        return float(hidden * int(model.item_weight.shape[0]))
    return 2.0 * hidden


def _contrast_vae(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    h, inner, layers = _transformer_sizes(config)
    layer = transformer_macs(data.lengths, h, inner, layers, causal=True)
    augmentation = str(model.augmentation)
    if augmentation == "vanilla":
        encoder_passes, branches = 2, 1
    else:
        shared = bool(model.share_encoder_pass) and augmentation in ("ma", "va")
        encoder_passes, branches = (2 if shared else 4), 2
    return {
        "encoders": encoder_passes * layer,
        "decoder": branches * layer,
        "output": branches * data.positions * _latent_output(model, config, h),
        "info_nce": _info_nce(data, h) if branches == 2 else 0.0,
    }


def _hybrid(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    h, inner, layers = _transformer_sizes(config)
    heads = 2 if str(config["latent"]) == "gaussian" else 1
    branches = tuple(model.active_branches)
    layer = transformer_macs(data.lengths, h, inner, layers, causal=True)
    filters = int(config["filter_n_layers"]) * 2.0 * h * inner * data.positions
    return {
        "branch1": heads * layer if 1 in branches else 0.0,
        "branch2": heads * filters if 2 in branches else 0.0,
        "decoder": len(branches) * layer,
        "output": len(branches) * data.positions * _latent_output(model, config, h),
        "info_nce": _info_nce(data, h) if len(branches) == 2 else 0.0,
    }


def _lightgcn(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    d, layers = int(config["embedding_size"]), int(config["n_layers"])
    nnz = 2.0 * int(data.interactions)
    return {"propagation": data.batches * layers * nnz * d, "scores": data.rows * 2.0 * d}


def _ngcf(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    dims = [int(config["embedding_size"]), *(int(d) for d in config["hidden_size_list"])]
    nnz, nodes = 2.0 * int(data.interactions), data.n_users + data.n_items
    per_batch = sum(nnz * a + 2.0 * nodes * a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    return {"propagation": data.batches * per_batch, "scores": data.rows * 2.0 * sum(dims)}


def _autoencoder(model: Any, config: Any, data: TrainingData) -> dict[str, float]:
    from torch import nn

    n_items = int(model.n_items)
    dense, sparse_out = 0.0, 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if module.in_features == n_items:
                sparse_out += module.out_features
            else:
                dense += module.in_features * module.out_features
    terms = {"input_layers": float(data.row_nnz) * sparse_out, "dense_layers": data.rows * dense}
    pseudo = getattr(model, "pseudo_inputs", None)
    if pseudo is not None:  # the VampPrior: the encoder on K pseudo-inputs, every batch
        k = int(pseudo.n_components)
        encoder = [model.q_z_layers, model.q_z_mean, model.q_z_logvar]
        q_z = sum(
            m.in_features * m.out_features
            for part in encoder
            for m in part.modules()
            if isinstance(m, nn.Linear)
        )
        z = int(model.q_z_mean.out_features)
        terms["vamp_prior"] = data.batches * k * float(q_z) + 2.0 * data.rows * k * z
    return terms


BOUNDS: dict[str, tuple[str, Callable[[Any, Any, TrainingData], dict[str, float]]]] = {
    "SASRec": ("SASRec", _sasrec),
    "GRU4Rec": ("GRU4Rec", _gru4rec),
    "NARM": ("NARM", _narm),
    "BERT4Rec": ("BERT4Rec", _bert4rec),
    "SLIME4Rec": ("SLIME4Rec", _slime4rec),
    "S3Rec": ("S3Rec", _s3rec),
    "ContrastVAE": ("ContrastVAE", _contrast_vae),
    "HybridContrastVAE": ("HybridContrastVAE", _hybrid),
    "LightGCN": ("LightGCN", _lightgcn),
    "NGCF": ("NGCF", _ngcf),
    **{
        name: ("autoencoder", _autoencoder)
        for name in ("MultVAE", "MultDAE", "Vamp", "HVamp", "HVampGated", "MultiVAE", "MultiDAE")
    },
}


def flop_bound(model_name: str, model: Any, config: Any, data: TrainingData) -> dict | None:
    """The lower bound on one training epoch's floating-point operations: the essential forward
    MACs of the regime run (per term) x 2 (FLOPs) x 3 (forward + backward); None for a model
    without a formula."""
    entry = BOUNDS.get(model_name)
    if entry is None:
        return None
    formula, compute = entry
    terms = {name: float(value) for name, value in compute(model, config, data).items()}
    macs = sum(terms.values())
    return {"formula": formula, "macs_terms": terms, "macs": macs, "flops": macs * 2 * 3}


# --- measuring (inside a worker) ------------------------------------------------------------------
class TimedBatches:
    """A training loader that yields at most ``limit`` batches (None: all) and records, for each,
    the seconds from the trainer's request for it to its request for the next (collation and
    the training step); everything else is the wrapped loader's."""

    def __init__(self, loader: Any, limit: int | None = None, width_field: str | None = None):
        self._loader = loader
        self.limit = limit
        self.width_field = width_field
        self.intervals: list[float] = []
        self.widths: list[int] = []

    def __iter__(self) -> Iterator[Any]:
        last = time.perf_counter()
        for i, batch in enumerate(self._loader):
            if self.width_field is not None and self.width_field in batch:
                self.widths.append(int(batch[self.width_field].shape[1]))
            yield batch
            now = time.perf_counter()
            self.intervals.append(now - last)
            last = now
            if self.limit is not None and i + 1 >= self.limit:
                return  # before the loader collates a batch nobody trains on

    def __len__(self) -> int:
        n = len(self._loader)
        return n if self.limit is None else min(n, self.limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def time_training(
    trainer: Any,
    loader: Any,
    max_batches: int,
    warmup: int,
    full_epoch_below: float,
    allow_full_epoch: bool,
    width_field: str | None = None,
) -> dict[str, Any]:
    """Seconds of one training epoch through ``trainer._train_epoch``: ``max_batches`` batches
    timed after ``warmup``, their mean x the loader's batches; then, if that projection is below
    ``full_epoch_below`` and ``allow_full_epoch``, a whole epoch, timed."""
    batches = len(loader)
    probe = TimedBatches(loader, warmup + max_batches, width_field)
    trainer._train_epoch(probe, 0)
    timed = probe.intervals[warmup:] or probe.intervals  # an epoch shorter than the warm-up
    per_batch = sum(timed) / len(timed)
    projection = per_batch * batches
    whole = None
    if allow_full_epoch and projection < full_epoch_below:
        start = time.perf_counter()
        trainer._train_epoch(loader, 1)
        whole = time.perf_counter() - start
    return {
        "batches": batches,
        "warmup_batches": min(warmup, len(probe.intervals)),
        "timed_batches": len(timed),
        "batch_seconds": probe.intervals,
        "seconds_per_batch": per_batch,
        "projected_seconds": projection,
        "whole_epoch_seconds": whole,
        "epoch_seconds": projection if whole is None else whole,
        "projected": whole is None,
        "batch_widths": sorted(set(probe.widths)),
    }


def _recbole_class(name: str) -> type | None:
    """RecBole's built-in model class called ``name``, if RecBole has one."""
    from recbole.utils import get_model

    try:
        cls = get_model(name)
    except (ValueError, ImportError):
        return None
    return cls if cls.__module__.startswith("recbole.model.") else None


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def training_data(loader: Any, prepared_data: Any, config: Any) -> TrainingData:
    """The rows, batches and sizes a bound reads, from the loader actually trained on."""
    from recbole.utils import ModelType

    dataset = loader._dataset
    model_dataset = prepared_data.model_dataset
    data = TrainingData(
        rows=len(dataset),
        batches=len(loader),
        n_users=int(model_dataset.user_num),
        n_items=int(model_dataset.item_num),
    )
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        data.lengths = dataset.inter_feat[dataset.item_list_length_field].numpy().astype(np.int64)
        data.max_length = int(config["MAX_ITEM_LIST_LENGTH"])
    else:
        matrix = model_dataset.inter_matrix(form="csr")
        data.interactions = int(matrix.nnz)
        per_user = np.diff(matrix.indptr)
        users = dataset.inter_feat[dataset.uid_field].numpy()
        data.row_nnz = int(per_user[users].sum())
    return data


def _data_summary(data: TrainingData) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "rows": data.rows, "batches": data.batches, "n_users": data.n_users,
        "n_items": data.n_items, "interactions": data.interactions, "row_nnz": data.row_nnz,
    }  # fmt: skip
    if data.lengths is not None:
        summary.update(
            positions=int(data.lengths.sum()),
            max_length=data.max_length,
            longest_row=int(data.lengths.max()) if len(data.lengths) else 0,
        )
    return summary


def _valid_users(loader: Any) -> int:
    dataset = loader._dataset
    return int(dataset.inter_feat[dataset.uid_field].unique().numel())


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One (dataset, model, variant): build it as ``bench.runner.execute`` does (with the
    variant's changes), then time and bound each training stage and validate."""
    import torch
    from recbole.config import Config
    from recbole.trainer.trainer import PretrainTrainer
    from recbole.utils import get_trainer, init_seed

    from recbole_ext import compat

    compat.apply()
    from bench.allocator import keep_freed_memory
    from bench.contract import RunOptions
    from bench.memory import PeakMemory
    from bench.preflight import prepare
    from bench.runner import build_model
    from recbole_ext import run_state
    from recbole_ext.data import LengthBucketedBatches, load_dataset, prepare_data
    from recbole_ext.training import recording_trainer

    before = job["variant"] == "before"
    spec = before_spec(job["model"]) if before else None
    settings = dict(job.get("settings") or {})
    if spec is not None:
        settings.update(BEFORE_SETTINGS)
        settings.update(spec.settings)
    request = RunOptions(
        dataset=job["dataset"],
        model=job["model"],
        settings=settings,
        device="cpu",
        data_dir=job.get("data_dir"),
        cache_dir=Path(job["cache_dir"]),
    )
    prepared = prepare(request)
    cls = prepared.spec.cls
    notes = [spec.note] if spec is not None and spec.note else []
    if spec is not None and spec.recbole_class:
        builtin = _recbole_class(prepared.spec.name)
        if builtin is not None and builtin is not cls:
            cls = builtin
            notes.append(f"RecBole's class {_class_path(builtin)}")
    threads = int(job["threads"])
    checkpoint_dir = Path(tempfile.mkdtemp(prefix="cpu-training-ckpt-"))
    try:
        config_dict = dict(prepared.config_dict)
        config_dict.update(
            data_path=str(prepared.data_path), checkpoint_dir=str(checkpoint_dir), threads=threads
        )
        config = Config(model=cls, dataset=prepared.data_name, config_dict=config_dict)
        torch.set_num_threads(threads)
        # After: glibc's malloc as bench.runner.execute sets it; before: glibc's defaults.
        malloc = "system" if before else keep_freed_memory()
        init_seed(config["seed"], config["reproducibility"])
        dataset, cached = load_dataset(config, request.cache_dir)
        prepared_data = prepare_data(config, dataset)
        train, valid = prepared_data.train, prepared_data.valid
        if before and isinstance(train, LengthBucketedBatches):
            train = train._loader  # RecBole's loader: random batches, MAX_ITEM_LIST_LENGTH wide
        two_stage = (
            issubclass(get_trainer(config["MODEL_TYPE"], config["model"]), PretrainTrainer)
            and config["train_stage"] == "pretrain"
        )
        stages = ["pretrain", "finetune"] if two_stage else [None]
        width_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        phases = []
        pretrained: Path | None = None
        for stage in stages:
            if stage == "finetune":
                config_dict.update(train_stage="finetune", pre_model_path=str(pretrained))
                config = Config(model=cls, dataset=prepared.data_name, config_dict=config_dict)
            init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
            model = build_model(cls, config, prepared_data, prepared.settings)
            trainer = recording_trainer(config, model)
            trainer.saved_model_file = str(checkpoint_dir / "best.pth")
            # What fit does before its first epoch.
            trainer.eval_collector.data_collect(train)
            if (config["train_neg_sample_args"] or {}).get("dynamic", False):
                train.get_model(model)
            memory = PeakMemory("cpu").start()
            training = time_training(
                trainer, train, int(job["max_batches"]), int(job["warmup_batches"]),
                float(job["full_epoch_below"]), bool(job["allow_full_epoch"]), width_field,
            )  # fmt: skip
            training["memory"] = memory.stop()
            validation = None
            if stage != "pretrain":
                memory = PeakMemory("cpu").start()
                start = time.perf_counter()
                score, _ = trainer._valid_epoch(valid, show_progress=False)
                seconds = time.perf_counter() - start
                validation = {
                    "seconds": seconds,
                    "users": _valid_users(valid),
                    "valid_score": float(score),
                    "memory": memory.stop(),
                }
            data = training_data(train, prepared_data, config)
            phases.append(
                {
                    "stage": stage,
                    "model_class": _class_path(type(model)),
                    "params": int(sum(p.numel() for p in model.parameters())),
                    "train_regime": str(config["train_regime"] or "interactions"),
                    "whole_sequence": _whole(model),
                    "loader": type(train).__name__,
                    "bucketed": bool(getattr(train, "bucket", False)),
                    "trimmed": bool(getattr(train, "trim", False)),
                    "fast_evaluation": config["fast_evaluation"] is not False,
                    "train": training,
                    "validation": validation,
                    "data": _data_summary(data),
                    "bound": flop_bound(prepared.spec.name, model, config, data),
                }
            )
            if stage == "pretrain":  # fine-tuning starts from these weights, as bench run does
                pretrained = run_state.pretrained_weights(checkpoint_dir, config["model"])
                torch.save({"state_dict": model.state_dict()}, pretrained)
        return {
            "dataset": job["dataset"],
            "model": prepared.spec.name,
            "variant": job["variant"],
            "registered_class": _class_path(prepared.spec.cls),
            "settings": settings,
            "dataset_cached": cached,
            "malloc": malloc,
            "notes": notes,
            "phases": phases,
        }
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def matmul_rate(size: int, repeats: int, threads: int) -> dict[str, Any]:
    """The dense fp32 ``torch.mm`` rate (GFLOP/s: 2 size^3 / seconds) of ``repeats`` products of
    two ``size`` x ``size`` matrices after one untimed one, with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    rates = [2.0 * size**3 / s / 1e9 for s in seconds]
    return {"size": size, "threads": threads, "seconds": seconds, "gflops": rates}


def run_worker(job_file: Path) -> int:
    """The subprocess: read the job, run it, write its result (atomically) where it says."""
    job = json.loads(job_file.read_text())
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # RecBole 1.2.1 on current PyTorch warns on every run about APIs it uses.
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            if job["kind"] == "matmul":
                body = matmul_rate(int(job["size"]), int(job["repeats"]), int(job["threads"]))
            else:
                body = measure(job)
        result: dict[str, Any] = {"status": "ok", **body}
    except Exception as exc:  # recorded; the parent goes on with the next job
        traceback.print_exc()
        message = " ".join(str(exc).split())[:300]
        result = {"status": "failed", "error": f"{type(exc).__name__}: {message}"}
    result["machine"] = machine_info(int(job["threads"]))
    result["worker_seconds"] = time.perf_counter() - started
    write_text(Path(job["result"]), json.dumps(result, default=str))
    return 0


# --- the parent -----------------------------------------------------------------------------------
Spawn = Callable[[dict[str, Any], float], dict[str, Any]]


def spawn(job: dict[str, Any], time_limit: float) -> dict[str, Any]:
    """Run one job in a fresh subprocess with ``job["threads"]`` threads everywhere."""
    threads = str(job["threads"])
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return run_worker_process(Path(__file__), job, time_limit, env)


def log(message: str) -> None:
    print(message, flush=True)


def _rows_of(job: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    """A job's table rows: one per training stage, or one carrying its error."""
    base = {k: job[k] for k in ("dataset", "model", "variant")}
    if result["status"] != "ok":
        return [{**base, "stage": None, "status": result["status"], "error": result.get("error")}]
    return [
        {**base, "status": "ok", "notes": result.get("notes", []), **phase}
        for phase in result["phases"]
    ]


def summarise(rows: list[dict[str, Any]], gflops: float | None) -> None:
    """Add each row's ratio to its bound and, on "after" rows, the before / after speed-ups."""
    for row in rows:
        if row["status"] != "ok":
            continue
        bound = row.get("bound")
        seconds_at_rate = bound["flops"] / (gflops * 1e9) if bound and gflops else None
        row["bound_seconds"] = seconds_at_rate
        row["ratio_to_bound"] = ratio(row["train"]["epoch_seconds"], seconds_at_rate)
    done = [r for r in rows if r["status"] == "ok"]
    ok = {(r["dataset"], r["model"], r["stage"], r["variant"]): r for r in done}
    for (dataset, model, stage, variant), row in ok.items():
        other = ok.get((dataset, model, stage, "before"))
        if variant != "after" or other is None:
            continue
        row["speedup_epoch"] = ratio(other["train"]["epoch_seconds"], row["train"]["epoch_seconds"])
        if row.get("validation") and other.get("validation"):
            row["speedup_validation"] = ratio(
                other["validation"]["seconds"], row["validation"]["seconds"]
            )


def run(
    args: argparse.Namespace, command: str | None = None, spawn_job: Spawn = spawn
) -> dict[str, Any]:
    """Measure every job of the plan and the matmul rate (before and after them); write and
    return the report."""
    jobs = plan_jobs(args)
    matmul_job = {
        "kind": "matmul", "size": args.matmul_size, "repeats": args.matmul_repeats,
        "threads": args.threads,
    }  # fmt: skip
    log(f"matmul rate ({args.matmul_size}^2, {args.threads} threads) ...")
    probes = [spawn_job(matmul_job, args.time_limit)]
    rows: list[dict[str, Any]] = []
    results = []
    for i, job in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {job['dataset']} {job['model']} {job['variant']}"
        log(f"{label} ...")
        result = spawn_job(job, args.time_limit)
        rows.extend(_rows_of(job, result))
        # The phases are the rows; the rest (notes, settings, errors, timings) stays per job.
        kept = {k: v for k, v in result.items() if k != "phases"}
        results.append({**{k: job[k] for k in ("dataset", "model", "variant")}, **kept})
        log(f"{label}: {_summary(rows[-1]) if result['status'] == 'ok' else result.get('error')}")
    probes.append(spawn_job(matmul_job, args.time_limit))
    rates = [g for p in probes if p["status"] == "ok" for g in p["gflops"]]
    gflops = median(rates)
    summarise(rows, gflops)
    machines = [r["machine"] for r in [*results, *probes] if r.get("machine")]
    machine = machines[0] if machines else machine_info(args.threads)
    report = {
        "schema": SCHEMA,
        "command": command or command_line("benchmarks/cpu_training.py"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": machine.get("git_commit"),
        "machine": machine,
        "settings": {
            "threads": args.threads,
            "max_batches": args.max_batches,
            "warmup_batches": WARMUP_BATCHES,
            "full_epoch_below": args.full_epoch_below,
            "always_projected": sorted(f"{d}:{v}" for d, v in ALWAYS_PROJECTED),
            "time_limit": args.time_limit,
            "data_dir": args.data_dir,
            "cache_dir": str(Path(args.cache_dir).resolve()),
            "quick": args.quick,
        },
        "matmul": {
            "probes": probes,
            "median_gflops": gflops,
            "best_gflops": max(rates) if rates else None,
        },
        "rows": rows,
        "jobs": results,
    }
    if args.update:
        report = merge_update(Path(args.out) / f"{STEM}.json", report)
    write_report(args.out, STEM, report, markdown(report))
    log(f"wrote {Path(args.out) / STEM}.json and .md")
    return report


def merge_update(path: Path, update: dict[str, Any]) -> dict[str, Any]:
    """The report at ``path`` with the (dataset, model) pairs measured in ``update`` replaced by
    its rows (each marked with the update's number), its other rows kept; the update's command,
    commit, machine and mm rate are listed under ``updates``. Without a report, ``update``."""
    if not path.is_file():
        return update
    base = json.loads(path.read_text())
    pairs = {(r["dataset"], r["model"]) for r in update["rows"]}
    number = len(base.get("updates", [])) + 1
    new_rows = [{**r, "update": number} for r in update["rows"]]
    rows: list[dict[str, Any]] = []
    placed: set[tuple[str, str]] = set()  # a pair's new rows go where its old ones were
    for row in base["rows"]:
        key = (row["dataset"], row["model"])
        if key not in pairs:
            rows.append(row)
        elif key not in placed:
            rows.extend(r for r in new_rows if (r["dataset"], r["model"]) == key)
            placed.add(key)
    rows.extend(r for r in new_rows if (r["dataset"], r["model"]) not in placed)
    jobs = [j for j in base["jobs"] if (j["dataset"], j["model"]) not in pairs]
    summary = {k: update[k] for k in ("command", "finished_at", "git_commit", "machine")}
    summary["pairs"] = sorted(f"{d}:{m}" for d, m in pairs)
    summary["median_gflops"] = update["matmul"]["median_gflops"]
    return {
        **base,
        "rows": rows,
        "jobs": jobs + [{**j, "update": number} for j in update["jobs"]],
        "updates": [*base.get("updates", []), summary],
    }


def _summary(row: dict[str, Any]) -> str:
    train = row["train"]
    kind = "projected" if train["projected"] else "measured"
    text = f"epoch {train['epoch_seconds']:.2f} s ({kind}, {train['batches']} batches)"
    if row.get("validation"):
        text += f", validation {row['validation']['seconds']:.2f} s"
    return text


# --- the markdown ------------------------------------------------------------------------------
def _stage_label(row: dict[str, Any]) -> str:
    stage = row.get("stage")
    names = {"pretrain": "pre-training", "finetune": "fine-tuning"}
    return f"{row['model']} ({names.get(stage, stage)})" if stage else row["model"]


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _table_row(row: dict[str, Any]) -> list[str]:
    label = _stage_label(row) + (f" (update {row['update']})" if row.get("update") else "")
    if row["status"] != "ok":
        error = f"{row['status']}: {row.get('error') or ''}"
        return [label, row["variant"], "", "", "", "", "", "", error]
    train, validation, bound = row["train"], row.get("validation"), row.get("bound")
    epoch = f"{train['epoch_seconds']:.2f}" + (" P" if train["projected"] else "")
    peak_train = train["memory"]["peak_mib"]
    peak = fmt(peak_train, 0) + (
        f" / {fmt(validation['memory']['peak_mib'], 0)}" if validation else " / -"
    )
    speedups = [_times(row.get("speedup_epoch")), _times(row.get("speedup_validation"))]
    return [
        label,
        row["variant"],
        fmt(train["batches"]),
        epoch,
        fmt(validation["seconds"]) if validation else "-",
        peak,
        fmt(bound["flops"] / 1e9, 1) if bound else "",
        fmt(row.get("ratio_to_bound"), 1),
        " / ".join(s or "-" for s in speedups) if any(speedups) else "",
    ]


def markdown(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    gflops = report["matmul"]["median_gflops"]
    lines = [
        "# CPU training: before and after",
        "",
        "    " + report["command"],
        "",
        f"Measured {machine.get('date', '')} on {machine.get('cpu', '?')} "
        f"({machine.get('usable_cores')} usable cores, {settings['threads']} torch threads, "
        f"load average {machine.get('load_average')}), torch {machine.get('torch')}, numpy "
        f"{machine.get('numpy')}, git {machine.get('git_commit')}. Dense fp32 `torch.mm` rate: "
        f"**{fmt(gflops, 1)} GFLOP/s** (median of {len(report['matmul']['probes'])} probes' "
        f"timings, {report['matmul']['probes'][0].get('size', '?')}^2, before and after the "
        "models).",
        "",
        "Each (dataset, model, variant) in a fresh subprocess. **s / epoch**: "
        f"{settings['max_batches']} batches timed after {settings['warmup_batches']} warm-up "
        "batches, mean x batches, marked **P** (projected); unmarked: a whole epoch, run when "
        f"the projection was below {fmt(settings['full_epoch_below'], 0)} s (never for "
        f"{', '.join(settings['always_projected']) or 'none'}). **s / validation**: one full "
        "`_valid_epoch`. **peak MiB**: the process's peak resident memory in training / in "
        "validation (dataset and interpreter included). **GFLOP bound**: the lower bound on one "
        "training epoch (formulas below); **x bound**: s / epoch over the bound's time at the "
        "mm rate. **speed-up**: before / after, epoch / validation.",
        "",
    ]
    for number, update in enumerate(report.get("updates", []), 1):
        lines += [
            f"**Update {number}**: the rows marked (update {number}) ("
            f"{', '.join(update['pairs'])}) were measured again, before and after in one run, "
            f"on {update['machine'].get('date', '')} at git {update['git_commit']} (mm rate "
            f"{fmt(update['median_gflops'], 1)} GFLOP/s, their x bound uses it): "
            f"`{update['command']}`.",
            "",
        ]
    headers = [
        "model", "variant", "batches", "s / epoch", "s / validation", "peak MiB",
        "GFLOP bound", "x bound", "speed-up",
    ]  # fmt: skip
    right = [False, False, True, True, True, True, True, True, True]
    datasets = list(dict.fromkeys(row["dataset"] for row in report["rows"]))
    for dataset in datasets:
        rows = [r for r in report["rows"] if r["dataset"] == dataset]
        lines += [f"## {dataset}", "", *markdown_table(headers, map(_table_row, rows), right), ""]
    lines += [
        "## The variants",
        "",
        "- **after**: the harness's defaults, built as `bench run` builds a run (`prepare`, "
        "`Config`, `load_dataset`, `prepare_data`, the model, `recording_trainer`).",
        "- **before**: RecBole's own path: "
        + ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in BEFORE_SETTINGS.items())
        + ", the training loader unwrapped from `LengthBucketedBatches` (random batches, "
        "MAX_ITEM_LIST_LENGTH wide), RecBole's built-in class where ours shadows it; per model:",
    ]
    for model in dict.fromkeys(r["model"] for r in report["rows"]):
        spec = before_spec(model)
        parts = [f"`{k}: {v}`" for k, v in spec.settings.items()]
        if not spec.recbole_class:
            parts.append("our class")
        if spec.note:
            parts.append(spec.note)
        lines.append(f"  - {model}: {'; '.join(parts) or 'RecBole class only'}")
    failures = [r for r in report["rows"] if r["status"] != "ok"]
    lines += [
        "",
        "## The lower bound",
        "",
        "Forward multiply-accumulates of the essential dense products of the regime run, from "
        "the model's sizes and the training rows' real (unpadded) positions, x 2 (FLOPs) x 3 "
        "(forward + backward). Embedding look-ups, norms, activations, dropout, the FFT filters "
        "and the optimizer step are left out. Per formula:",
        "",
        *[f"- **{name}**: {text}" for name, text in FORMULAS.items()],
        "",
    ]
    if failures:
        lines += [f"{len(failures)} job(s) did not finish: see their rows and the JSON.", ""]
    return "\n".join(lines)


# --- the command line ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CPU training speed before and after (see the module docstring).",
    )
    p.add_argument("--datasets", default=None, help=f"comma list (default: {', '.join(PLAN)})")
    p.add_argument("--models", default=None, help="comma list (default: the plan's)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="before, after or both")
    p.add_argument("--data-dir", default=None, help="where the datasets' folders are")
    p.add_argument("--max-batches", type=int, default=None, help="timed batches (default 20)")
    p.add_argument(
        "--full-epoch-below", type=float, default=None,
        help="run a whole epoch when its projection is below this many seconds (default 300)",
    )  # fmt: skip
    p.add_argument(
        "--time-limit", type=float, default=None,
        help="wall-clock seconds per (dataset, model, variant) subprocess (default 1800)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="default: all usable cores")
    p.add_argument("--quick", action="store_true", help="a smoke run on ml-100k")
    p.add_argument("--cache-dir", default=str(REPO / "results" / "cache" / "datasets"))
    p.add_argument("--out", default=str(REPO / "results" / "perf"))
    p.add_argument(
        "--update", action="store_true",
        help="replace the measured (dataset, model) rows of the report at --out, keep the rest",
    )  # fmt: skip
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, default in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, QUICK[key] if args.quick else default)
    if args.threads is None:
        args.threads = usable_cores()
    if args.max_batches < 1 or args.threads < 1:
        p.error("--max-batches and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(Path(args.worker))
    report = run(args, command_line("benchmarks/cpu_training.py", argv))
    failed = [r for r in report["rows"] if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
