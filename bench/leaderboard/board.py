"""Aggregation: one row per model over its seeds (test metrics' mean and std, failures, flags,
training regime, how its runs stopped), and the per-user values the significance tests take."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench import stats
from bench.contract import STOP_REASONS, RunResult, read_per_user, run_path

_METRIC_ORDER = ("ndcg", "hit", "recall", "mrr", "precision")
# RecBole's metrics where lower is better (recbole.evaluator: smaller_metrics).
_SMALLER_IS_BETTER = ("rmse", "mae", "logloss", "averagepopularity", "giniindex")
# The leaderboard's name of each `train_regime` of a sequential model.
REGIME_LABELS = {"users": "whole-sequence", "interactions": "per-prefix"}


@dataclass
class Board:
    """Everything a leaderboard or report shows for one dataset."""

    dataset: str
    results: list[RunResult]
    table: pd.DataFrame
    significance: pd.DataFrame
    provenance: dict[str, Any]
    primary: str | None = None  # the validation metric, ranked on test
    best: str | None = None
    baseline: str | None = None
    alpha: float = stats.ALPHA
    untested: list[str] = field(default_factory=list)  # models without per-user values
    test: str = stats.DEFAULT_TEST  # the test that decides the markers
    # Tests of chosen (model, reference) pairs (``bench report --pair``): stats.compare_pairs.
    pair_tests: pd.DataFrame | None = None

    @property
    def ok(self) -> list[RunResult]:
        return [r for r in self.results if r.ok]


def metric_sort_key(name: str) -> tuple[int, int, str]:
    base, _, k = name.partition("@")
    rank = _METRIC_ORDER.index(base) if base in _METRIC_ORDER else len(_METRIC_ORDER)
    return (rank, int(k) if k.isdigit() else 0, base)


def bigger_is_better(metric: str) -> bool:
    return metric.partition("@")[0].lower() not in _SMALLER_IS_BETTER


def metric_names(table: pd.DataFrame) -> list[str]:
    """The test metrics of a table (``ndcg@10``...), in display order."""
    return [
        c.removeprefix("test_")
        for c in table.columns
        if c.startswith("test_") and not c.endswith("_std")
    ]


def data_digest(sha256: dict[str, str] | None) -> str | None:
    """One short fingerprint of a dataset folder from its per-file sha256."""
    if not sha256:
        return None
    blob = "\n".join(f"{name} {digest}" for name, digest in sorted(sha256.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_digest(result: RunResult) -> str | None:
    """The fingerprint of the data a run read (None when it recorded none)."""
    return data_digest(result.data.sha256 if result.data else None)


def distinct(values: list[Any]) -> list[Any]:
    """``values`` without repeats, in first-seen order."""
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def stop_counts(runs: list[RunResult]) -> dict[str, int]:
    """How many of ``runs`` ended each way, in :data:`STOP_REASONS` order (reasons with none
    left out)."""
    counts = Counter(r.stop_reason for r in runs)
    return {reason: counts[reason] for reason in STOP_REASONS if counts[reason]}


def stop_text(counts: dict[str, int]) -> str:
    """The table's ``stop_reasons`` cell: ``early_stopping:2 time_budget:1``."""
    return " ".join(f"{reason}:{n}" for reason, n in counts.items())


def _row_flags(ok: list[RunResult]) -> dict[str, Any]:
    hashes = distinct([r.config_hash for r in ok])
    versions = distinct([r.code_version for r in ok])
    digests = distinct([run_digest(r) for r in ok])
    flags = {
        "mixed_config": len(hashes) > 1,
        "mixed_commit": len(versions) > 1,
        "mixed_data": len(digests) > 1,
    }
    return {
        **flags,
        "flags": " ".join(k.replace("_", "-") for k, v in flags.items() if v),
        "config_hash": ",".join(str(h) for h in hashes if h is not None),
    }


def run_regime(result: RunResult) -> str:
    """How a sequential run trained: ``whole-sequence`` (``train_regime: users``) or
    ``per-prefix`` (``interactions``, also when the key is absent: the harness's default);
    empty for the other families, which have no prefixes."""
    if result.family != "sequential":
        return ""
    regime = result.config.get("train_regime") or "interactions"
    return REGIME_LABELS.get(regime, str(regime))


def _row_regime(ok: list[RunResult]) -> str:
    regimes = distinct([run_regime(r) for r in ok])
    if not regimes:
        return ""
    return regimes[0] if len(regimes) == 1 else "mixed"


def build(results: list[RunResult]) -> pd.DataFrame:
    """One row per model: seeds, failures, how its runs stopped, flags, training regime, mean
    and std of each test metric over seeds, mean best epoch and training time."""
    by_model: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        by_model[result.model].append(result)
    rows = []
    for model, runs in by_model.items():
        ok = sorted((r for r in runs if r.ok), key=lambda r: r.seed)
        row: dict[str, Any] = {
            "model": model,
            "family": ok[0].family if ok else None,
            "regime": _row_regime(ok),
            "seeds": len(ok),
            "failed": len(runs) - len(ok),
            "quick": any(r.quick for r in ok),
            "budget_limited": sum(r.stopped_by_budget for r in ok),
            "stop_reasons": stop_text(stop_counts(ok)),
            **_row_flags(ok),
        }
        if ok:
            metrics = sorted({m for r in ok for m in r.test}, key=metric_sort_key)
            for metric in metrics:
                mean, std, _ = stats.mean_std(r.test.get(metric) for r in ok)
                row[f"test_{metric}"] = mean
                row[f"test_{metric}_std"] = std
            row["best_epoch"] = stats.mean_std(r.best_epoch for r in ok)[0]
            train = stats.mean_std(
                r.timing.train_seconds_all_sittings if r.timing else None for r in ok
            )
            row["train_seconds"], row["train_seconds_std"] = train[0], train[1]
            row["valid_metric"] = ok[0].valid_metric
        else:
            error = runs[-1].error
            row["error"] = error.message if error else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    metric_cols = sorted(
        (c for c in table.columns if c.startswith("test_")),
        key=lambda c: (*metric_sort_key(c.removeprefix("test_").removesuffix("_std")), c),
    )
    fixed = [
        "model",
        "family",
        "regime",
        "seeds",
        "failed",
        "quick",
        "budget_limited",
        "stop_reasons",
        "mixed_config",
        "mixed_commit",
        "mixed_data",
        "flags",
        "config_hash",
    ]
    tail = ["best_epoch", "train_seconds", "train_seconds_std", "valid_metric", "error"]
    table = table[fixed + metric_cols + [c for c in tail if c in table]]
    sort_col = _sort_column(table, results)
    if sort_col is not None:
        ascending = not bigger_is_better(sort_col.removeprefix("test_"))
        table = table.sort_values(sort_col, ascending=ascending, na_position="last")
    return table.reset_index(drop=True)


def primary_metric(results: list[RunResult]) -> str | None:
    """The validation metric most runs selected on: the board ranks on it."""
    valid_metrics = [r.valid_metric for r in results if r.valid_metric]
    return Counter(valid_metrics).most_common(1)[0][0] if valid_metrics else None


def _sort_column(table: pd.DataFrame, results: list[RunResult]) -> str | None:
    primary = primary_metric(results)
    if primary and f"test_{primary}" in table:
        return f"test_{primary}"
    metrics = metric_names(table)
    return f"test_{metrics[0]}" if metrics else None


def per_user_values(
    out: str | os.PathLike, dataset: str, results: list[RunResult]
) -> dict[str, pd.DataFrame]:
    """Each model's per-user test values averaged over its seeds (index: raw user id)."""
    frames: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for r in results:
        if not r.ok or not r.per_user_file:
            continue
        data = read_per_user(run_path(out, dataset, r.model, r.seed))
        if not data or "user_id" not in data:
            continue
        columns = {k: v for k, v in data.items() if "@" in k}
        frame = pd.DataFrame(columns, index=pd.Index(data["user_id"].astype(str), name="user"))
        frames[r.model].append(frame)
    return {model: stats.average_over_seeds(seeds) for model, seeds in frames.items()}


def seed_noise_flags(board: Board) -> dict[str, list[str]]:
    """The references (``best``, ``baseline``) each row is within seed noise of, on the primary
    metric: its mean over seeds differs from the reference's by less than the larger of the two
    rows' std over seeds. The per-user tests see one seed-averaged value per user and ignore
    training randomness, so a marker on such a row may not survive other seeds.

    A row with a single seed has no std and is never flagged; a single-seed reference
    contributes no std, so the row's own std is the threshold then.
    """
    column = f"test_{board.primary}"
    if not board.primary or column not in board.table:
        return {}
    table = board.table.set_index("model")
    flags: dict[str, list[str]] = {}
    for reference, role in ((board.best, "best"), (board.baseline, "baseline")):
        if reference is None or reference not in table.index:
            continue
        ref_mean = table.at[reference, column]
        ref_std = table.at[reference, f"{column}_std"]
        for model, row in table.iterrows():
            if model == reference or row["seeds"] < 2 or pd.isna(row[f"{column}_std"]):
                continue
            stds = [s for s in (row[f"{column}_std"], ref_std) if not pd.isna(s)]
            if abs(row[column] - ref_mean) < max(stds):
                flags.setdefault(str(model), []).append(role)
    return flags
