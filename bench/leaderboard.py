"""Leaderboards from per-run results: one row per model, test metrics over seeds.

``<out>/leaderboard/<dataset>.csv``               full precision: mean and std per test metric
``<out>/leaderboard/<dataset>.md``                mean ± std, best/second best marked, paired
                                                  significance against the best model (and a
                                                  baseline), seed-noise flags, protocol and
                                                  provenance
``<out>/leaderboard/<dataset>.significance.csv``  every paired test with the confidence interval
                                                  of the mean difference (see :mod:`bench.stats`)
``<out>/leaderboard/<dataset>.provenance.json``   what produced the numbers

Runs that failed are counted, never averaged. Rows whose seeds ran with different configs, code
versions or data files are flagged. ``docs/statistics.md`` explains the statistics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import stats
from bench.errors import BenchError
from bench.io import write_json, write_text
from bench.results import load_results, read_per_user, run_path

_METRIC_ORDER = ("ndcg", "hit", "recall", "mrr", "precision")
# RecBole's metrics where lower is better (recbole.evaluator: smaller_metrics).
_SMALLER_IS_BETTER = ("rmse", "mae", "logloss", "averagepopularity", "giniindex")
_FILTER_KEYS = (
    "user_inter_num_interval",
    "item_inter_num_interval",
    "val_interval",
    "rm_dup_inter",
    "filter_inter_by_user_or_item",
)
BEST_MARK = "†"
BASELINE_MARK = "‡"
NOISE_MARK = "≈"
TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
# The leaderboard's name of each `train_regime` of a sequential model.
REGIME_LABELS = {"users": "whole-sequence", "interactions": "per-prefix"}


@dataclass
class Board:
    """Everything a leaderboard or report shows for one dataset."""

    dataset: str
    results: list[dict[str, Any]]
    table: pd.DataFrame
    significance: pd.DataFrame
    provenance: dict[str, Any]
    primary: str | None = None  # the validation metric, ranked on test
    best: str | None = None
    baseline: str | None = None
    alpha: float = stats.ALPHA
    untested: list[str] = field(default_factory=list)  # models without per-user values
    test: str = stats.DEFAULT_TEST  # the test that decides the markers

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("status") == "ok"]


def _metric_sort_key(name: str) -> tuple[int, int, str]:
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


def _distinct(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _row_flags(ok: list[dict[str, Any]]) -> dict[str, Any]:
    hashes = _distinct([r.get("config_hash") for r in ok])
    commits = _distinct([(r.get("environment") or {}).get("git_commit") for r in ok])
    digests = _distinct([data_digest((r.get("data") or {}).get("sha256")) for r in ok])
    flags = {
        "mixed_config": len(hashes) > 1,
        "mixed_commit": len(commits) > 1,
        "mixed_data": len(digests) > 1,
    }
    return {
        **flags,
        "flags": " ".join(k.replace("_", "-") for k, v in flags.items() if v),
        "config_hash": ",".join(str(h) for h in hashes if h is not None),
    }


def run_regime(result: dict[str, Any]) -> str:
    """How a sequential run trained: ``whole-sequence`` (``train_regime: users``) or
    ``per-prefix`` (``interactions``, also when the key is absent: the harness's default);
    empty for the other families, which have no prefixes."""
    if result.get("family") != "sequential":
        return ""
    regime = (result.get("config") or {}).get("train_regime") or "interactions"
    return REGIME_LABELS.get(regime, str(regime))


def _row_regime(ok: list[dict[str, Any]]) -> str:
    regimes = _distinct([run_regime(r) for r in ok])
    if not regimes:
        return ""
    return regimes[0] if len(regimes) == 1 else "mixed"


def build(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per model: seeds, failures, flags, training regime, mean and std of each test
    metric over seeds, mean best epoch and training time."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_model[result["model"]].append(result)
    rows = []
    for model, runs in by_model.items():
        ok = sorted((r for r in runs if r.get("status") == "ok"), key=lambda r: r["seed"])
        row: dict[str, Any] = {
            "model": model,
            "family": ok[0].get("family") if ok else None,
            "regime": _row_regime(ok),
            "seeds": len(ok),
            "failed": len(runs) - len(ok),
            "quick": any(r.get("quick") for r in ok),
            "budget_limited": sum(bool(r.get("stopped_by_budget")) for r in ok),
            **_row_flags(ok),
        }
        if ok:
            metrics = sorted({m for r in ok for m in r["test"]}, key=_metric_sort_key)
            for metric in metrics:
                mean, std, _ = stats.mean_std(r["test"].get(metric) for r in ok)
                row[f"test_{metric}"] = mean
                row[f"test_{metric}_std"] = std
            row["best_epoch"] = stats.mean_std(r.get("best_epoch") for r in ok)[0]
            train = stats.mean_std(r["timing"]["train_seconds"] for r in ok)
            row["train_seconds"], row["train_seconds_std"] = train[0], train[1]
            row["valid_metric"] = ok[0].get("valid_metric")
        else:
            row["error"] = runs[-1].get("error", {}).get("message", "")
        rows.append(row)
    table = pd.DataFrame(rows)
    metric_cols = sorted(
        (c for c in table.columns if c.startswith("test_")),
        key=lambda c: (*_metric_sort_key(c.removeprefix("test_").removesuffix("_std")), c),
    )
    fixed = [
        "model",
        "family",
        "regime",
        "seeds",
        "failed",
        "quick",
        "budget_limited",
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


def _primary_metric(results: list[dict[str, Any]]) -> str | None:
    valid_metrics = [r.get("valid_metric") for r in results if r.get("valid_metric")]
    return Counter(valid_metrics).most_common(1)[0][0] if valid_metrics else None


def _sort_column(table: pd.DataFrame, results: list[dict[str, Any]]) -> str | None:
    primary = _primary_metric(results)
    if primary and f"test_{primary}" in table:
        return f"test_{primary}"
    metrics = metric_names(table)
    return f"test_{metrics[0]}" if metrics else None


# --- per-user values and significance ---------------------------------------------------------


def per_user_values(
    out: str | os.PathLike, dataset: str, results: list[dict[str, Any]]
) -> dict[str, pd.DataFrame]:
    """Each model's per-user test values averaged over its seeds (index: raw user id)."""
    frames: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for r in results:
        if r.get("status") != "ok" or not r.get("per_user_file"):
            continue
        data = read_per_user(run_path(out, dataset, r["model"], r["seed"]))
        if not data or "user_id" not in data:
            continue
        columns = {k: v for k, v in data.items() if "@" in k}
        frame = pd.DataFrame(columns, index=pd.Index(data["user_id"].astype(str), name="user"))
        frames[r["model"]].append(frame)
    return {model: stats.average_over_seeds(seeds) for model, seeds in frames.items()}


def compute(
    out: str | os.PathLike,
    dataset: str,
    baseline: str | None = None,
    alpha: float = stats.ALPHA,
    test: str = stats.DEFAULT_TEST,
) -> Board | None:
    """The leaderboard, significance tests and provenance of ``dataset``; None if no results.

    ``test`` (``t`` or ``wilcoxon``) decides the significance markers; both are computed.
    Raises :class:`BenchError` when ``baseline`` names no model with a successful run, or
    ``test`` is unknown.
    """
    stats.check_test(test)
    results = load_results(out, dataset)
    if not results:
        return None
    table = build(results)
    if baseline is not None:
        ok_models = list(table.loc[table["seeds"] > 0, "model"])
        if baseline not in ok_models:
            known = ", ".join(sorted(set(table["model"])))
            why = "has no successful run" if baseline in set(table["model"]) else "is unknown"
            raise BenchError(
                f"baseline {baseline!r} {why} for dataset {dataset!r} (models: {known})"
            )
    primary = _primary_metric(results)
    ranked = table[table["seeds"] > 0]
    if primary and f"test_{primary}" in table:
        ranked = ranked[ranked[f"test_{primary}"].notna()]
    best = str(ranked.iloc[0]["model"]) if len(ranked) else None
    references = [(best, "best")] if best else []
    if baseline and baseline != best:
        references.append((baseline, "baseline"))
    per_user = per_user_values(out, dataset, results)
    metrics = [m for m in metric_names(table) if any(m in f for f in per_user.values())]
    if primary in metrics:  # the tested metric first
        metrics.remove(primary)
        metrics.insert(0, primary)
    # The primary metric's interval is bootstrapped (no normality assumed); the t-interval,
    # cheap and close at these user counts, serves the other metrics.
    bootstrap_metrics = [primary] if primary in metrics else []
    significance = stats.compare(per_user, references, metrics, alpha, bootstrap_metrics)
    untested = [m for m in ranked["model"] if m not in per_user]
    board = Board(
        dataset=dataset,
        results=results,
        table=table,
        significance=significance,
        provenance={},
        primary=primary,
        best=best,
        baseline=baseline,
        alpha=alpha,
        untested=untested,
        test=test,
    )
    board.provenance = provenance(board)
    board.provenance["rebuild_command"] = rebuild_command(
        "leaderboard", out, dataset, baseline, test
    )
    return board


def rebuild_command(
    verb: str,
    out: str | os.PathLike,
    dataset: str,
    baseline: str | None = None,
    test: str = stats.DEFAULT_TEST,
) -> str:
    """The ``bench leaderboard`` (or ``bench report``) command that writes this again from the
    runs under ``out``."""
    command = f"bench {verb} --results {out} --dataset {dataset}"
    command += f" --baseline {baseline}" if baseline else ""
    return command + (f" --test {test}" if test != stats.DEFAULT_TEST else "")


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


# --- provenance --------------------------------------------------------------------------------


def protocol(result: dict[str, Any]) -> dict[str, Any]:
    """The evaluation protocol a run followed, from its resolved config."""
    config = result.get("config") or {}
    eval_args = config.get("eval_args") or {}
    return {
        "split": eval_args.get("split"),
        "order": eval_args.get("order"),
        "group_by": eval_args.get("group_by"),
        "mode": eval_args.get("mode"),
        "filters": {k: config.get(k) for k in _FILTER_KEYS},
        # Only sequential models read it; RecBole's default in a general model's config is noise.
        "max_sequence_length": (
            config.get("MAX_ITEM_LIST_LENGTH") if result.get("family") == "sequential" else None
        ),
        "exclude_history_items": config.get("exclude_history_items"),
        "valid_metric": result.get("valid_metric"),
        "metrics": config.get("metrics"),
        "topk": config.get("topk"),
        "eval_user_limit": config.get("eval_user_limit"),
    }


def _compatible(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same protocol; a general model (no max sequence length) fits any sequential one."""
    for key in a.keys() | b.keys():
        if key == "max_sequence_length" and None in (a.get(key), b.get(key)):
            continue
        if a.get(key) != b.get(key):
            return False
    return True


def merge_protocols(protocols: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct protocols among runs, general models merged into a compatible one."""
    groups: list[dict[str, Any]] = []
    for p in protocols:
        for i, group in enumerate(groups):
            if _compatible(group, p):
                if group["max_sequence_length"] is None:
                    groups[i] = p
                break
        else:
            groups.append(p)
    return groups


def provenance(board: Board) -> dict[str, Any]:
    """What produced the numbers: protocol, data, configs, code, packages, hardware, dates."""
    ok = board.ok
    protocols = merge_protocols([protocol(r) for r in ok])
    fingerprints = []
    for digest in _distinct([data_digest((r.get("data") or {}).get("sha256")) for r in ok]):
        run = next(r for r in ok if data_digest((r.get("data") or {}).get("sha256")) == digest)
        data = run.get("data") or {}
        fingerprints.append(
            {
                "digest": digest,
                "sha256": data.get("sha256"),
                "users": data.get("users"),
                "items": data.get("items"),
                "interactions": data.get("interactions"),
                "source": data.get("source"),
                "models": sorted(
                    {
                        r["model"]
                        for r in ok
                        if data_digest((r.get("data") or {}).get("sha256")) == digest
                    }
                ),
            }
        )
    packages: dict[str, list[str]] = defaultdict(list)
    for r in ok:
        for name, version in ((r.get("environment") or {}).get("packages") or {}).items():
            if version is not None and version not in packages[name]:
                packages[name].append(version)
    hardware = []
    for r in ok:
        env = r.get("environment") or {}
        key = {k: env.get(k) for k in ("device", "device_name", "cpu_count", "platform")}
        entry = next((h for h in hardware if h["machine"] == key), None)
        if entry is None:
            entry = {"machine": key, "models": []}
            hardware.append(entry)
        if r["model"] not in entry["models"]:
            entry["models"].append(r["model"])
    finished = sorted(r["finished_at"] for r in ok if r.get("finished_at"))
    models: dict[str, Any] = {}
    for row in board.table.itertuples(index=False):
        runs = sorted((r for r in ok if r["model"] == row.model), key=lambda r: r["seed"])
        done = sorted(r["finished_at"] for r in runs if r.get("finished_at"))
        models[row.model] = {
            "seeds": [r["seed"] for r in runs],
            "failed": int(row.failed),
            "config_hashes": _distinct([r.get("config_hash") for r in runs]),
            "git_commits": _distinct(
                [(r.get("environment") or {}).get("git_commit") for r in runs]
            ),
            "data_digests": _distinct(
                [data_digest((r.get("data") or {}).get("sha256")) for r in runs]
            ),
            "flags": row.flags.split() if row.flags else [],
            "train_regimes": _distinct([(r.get("config") or {}).get("train_regime") for r in runs]),
            "quick": bool(row.quick),
            "first_finished_at": done[0] if done else None,
            "last_finished_at": done[-1] if done else None,
            # What trained the row: each run's own command line, as it was typed or planned.
            "commands": _distinct([r.get("command") for r in runs]),
        }
    return {
        "dataset": board.dataset,
        "protocol": protocols[0] if len(protocols) == 1 else None,
        "protocols": protocols if len(protocols) > 1 else [],
        "dataset_fingerprints": fingerprints,
        "models": models,
        "git_commits": _distinct([(r.get("environment") or {}).get("git_commit") for r in ok]),
        "packages": dict(packages),
        "python": _distinct([(r.get("environment") or {}).get("python") for r in ok]),
        "hardware": hardware,
        "runs": {
            "ok": len(ok),
            "failed": len(board.results) - len(ok),
            "first_finished_at": finished[0] if finished else None,
            "last_finished_at": finished[-1] if finished else None,
        },
        "statistics": {
            "aggregation": "mean and sample standard deviation (ddof=1) over seeds",
            "pairing": "by user id; users evaluated for both models; "
            "each user's value averaged over a model's seeds first",
            "tests": "two-sided paired t-test and Wilcoxon signed-rank test (zero differences "
            "dropped)",
            "marker_test": board.test,
            "correction": "Holm, over the models compared with the same reference on the same "
            "metric with the same test",
            "alpha": board.alpha,
            "confidence_intervals": f"{stats.CONFIDENCE:.0%} interval of the mean difference "
            f"(model - reference): percentile bootstrap over users "
            f"({stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}) on the "
            "primary metric, t-interval on the others",
            "seed_noise_flag": "a row with at least two seeds whose mean differs from a "
            "reference's by less than the larger of the two rows' std over seeds",
            "effect_sizes": "rank-biserial correlation (Wilcoxon), Cohen's d_z (t-test), "
            "on model - reference",
            "primary_metric": board.primary,
            "metrics_tested": sorted(set(board.significance["metric"]), key=_metric_sort_key),
            "best": board.best,
            "baseline": board.baseline,
            "untested_models": board.untested,
        },
    }


# --- markdown ----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def _g(value: float) -> str:
    """Test statistics and d: 4 significant digits (t and d explode for near-constant shifts)."""
    return "" if math.isnan(value) else f"{value:.4g}"


def _p(value: float) -> str:
    return "" if math.isnan(value) else (f"{value:.2e}" if value < 1e-3 else f"{value:.4f}")


def _ranks(values: pd.Series, bigger: bool) -> tuple[float | None, float | None]:
    """The best and the second-best distinct value of a column."""
    distinct = sorted(values.dropna().unique(), reverse=bigger)
    return (
        distinct[0] if distinct else None,
        distinct[1] if len(distinct) > 1 else None,
    )


def _significant(board: Board, role: str) -> set[tuple[str, str]]:
    sig = board.significance
    if sig.empty:
        return set()
    hits = sig[(sig["test"] == board.test) & (sig["role"] == role) & sig["significant"]]
    return set(zip(hits["model"], hits["metric"], strict=True))


def table_markdown(board: Board) -> str:
    """The leaderboard table with its caption and notes."""
    table = board.table
    metrics = metric_names(table)
    shown = ["model", "family", "regime", "seeds", "noise", *metrics]
    shown += ["best_epoch", "train_seconds", "config"]
    header = [c if c != "train_seconds" else "train_s" for c in shown]
    marks = {
        BEST_MARK: _significant(board, "best"),
        BASELINE_MARK: _significant(board, "baseline"),
    }
    role_marks = {"best": BEST_MARK, "baseline": BASELINE_MARK}
    noise = {
        model: NOISE_MARK + "".join(role_marks[role] for role in roles)
        for model, roles in seed_noise_flags(board).items()
    }
    ranks = {m: _ranks(table[f"test_{m}"], bigger_is_better(m)) for m in metrics}
    left = ("model", "family", "regime", "noise", "config")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if c in left else "---:" for c in shown) + "|")
    for _, row in table.iterrows():
        cells = []
        for col in shown:
            if col in metrics:
                mean, std = row[f"test_{col}"], row[f"test_{col}_std"]
                if pd.isna(mean):
                    cells.append("")
                    continue
                text = f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"
                best, second = ranks[col]
                if mean == best:
                    text = f"**{text}**"
                elif mean == second:
                    text = f"_{text}_"
                text += "".join(m for m, hits in marks.items() if (row["model"], col) in hits)
                cells.append(text)
            elif col == "config":
                cells.append(f"`{row['config_hash']}`" if row["config_hash"] else "")
            elif col == "noise":
                cells.append(noise.get(row["model"], ""))
            elif col in ("best_epoch", "train_seconds"):
                cells.append(_fmt(row.get(col), 1))
            else:
                cells.append(_fmt(row[col]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*_caption(board), "", *lines, *_notes(board)])


def _caption(board: Board) -> list[str]:
    ranked_on = f"ranked by test {board.primary}" if board.primary else "ranked"
    text = (
        "Test metrics: mean ± sample standard deviation over seeds (the `seeds` column; no ± for "
        "a single seed). Per column, **bold** is the best and _italics_ the second best. Models "
        f"are selected (best epoch) on validation {board.primary or 'metric'} and {ranked_on}. "
        "`config`: the row's config hash."
    )
    text += (
        " `regime`: how a sequential model trained, `per-prefix` (RecBole's: every prefix of a "
        "sequence is one sample, the loss at its last position; `train_regime: interactions`) "
        "or `whole-sequence` (one sample per user, a loss at every position; `train_regime: "
        "users`); `mixed` when its seeds differ; empty for other families."
    )
    if board.best:
        other = next(t for t in stats.TESTS if t != board.test)
        text += (
            f" {BEST_MARK}: significantly different from the best model, {board.best} "
            f"({TEST_NAMES[board.test]} on per-user values, Holm-adjusted, alpha {board.alpha}; "
            f"the {TEST_NAMES[other]} is in the significance table)."
        )
    if board.baseline and board.baseline != board.best:
        text += f" {BASELINE_MARK}: significantly different from the baseline, {board.baseline}."
    elif board.baseline:
        text += f" The baseline, {board.baseline}, is the best model."
    if board.best and board.primary:
        baseline_noise = (
            f" ({NOISE_MARK}{BASELINE_MARK}: from the baseline's)"
            if board.baseline and board.baseline != board.best
            else ""
        )
        text += (
            f" `noise`: {NOISE_MARK}{BEST_MARK} marks a row whose mean test {board.primary} "
            f"differs from the best model's{baseline_noise} by less than the larger of the two "
            "rows' std over seeds: the per-user tests ignore training randomness, so a marker "
            "there may not survive other seeds. A row with a single seed has no std and cannot "
            "be flagged."
        )
    capped = [r for r in board.ok if (r.get("config") or {}).get("time_budget_s")]
    stopped = [r for r in capped if r.get("stopped_by_budget")]
    if capped:
        # The span is the stopped runs' caps: a plan's deadline gives the runs it does not mean
        # to cap (budget 0) all the time left, and that number says nothing about the board.
        caps = sorted({float(r["config"]["time_budget_s"]) for r in stopped or capped})
        span = f"{caps[0]:.0f} s" if caps[0] == caps[-1] else f"{caps[0]:.0f}-{caps[-1]:.0f} s"
        finished = len(capped) - len(stopped)
        lead = (
            f"**Budget-limited:** {len(stopped)} of {len(board.ok)} runs stopped at a wall-clock "
            f"training cap (`time_budget_s`, {span}) before early stopping; their numbers are "
            "lower bounds of what the models reach."
        )
        if finished:
            lead += f" {finished} more ran under a cap and finished before it."
        text = lead + "\n\n" + text
    return [text]


def _notes(board: Board) -> list[str]:
    table = board.table
    notes = []
    if table["quick"].any():
        notes.append("Rows from `--quick` smoke runs are not comparable with full runs.")
    for row in table.itertuples(index=False):
        if row.budget_limited:
            notes.append(
                f"{row.model}: {row.budget_limited} of {row.seeds} run(s) stopped by the "
                "training time budget (`time_budget_s`) before early stopping: budget-limited."
            )
        if row.mixed_config:
            notes.append(
                f"Seeds of {row.model} ran with different configs ({row.config_hash}); "
                "their mean mixes them."
            )
        model = board.provenance.get("models", {}).get(row.model, {})
        if row.mixed_commit:
            commits = ", ".join(str(c) for c in model.get("git_commits", []))
            notes.append(f"Seeds of {row.model} ran on different code versions ({commits}).")
        if row.mixed_data:
            digests = ", ".join(str(d) for d in model.get("data_digests", []))
            notes.append(f"Seeds of {row.model} ran on different data files ({digests}).")
    if len(board.provenance.get("dataset_fingerprints", [])) > 1:
        notes.append(
            "Rows ran on different data files (see the dataset fingerprints below); "
            "they are not comparable."
        )
    if board.provenance.get("protocols"):
        notes.append("Rows followed different protocols (see below); they are not comparable.")
    if board.untested:
        notes.append(
            f"No per-user values stored for {', '.join(board.untested)}: not tested for "
            "significance."
        )
    if table["failed"].any():
        failed = table.loc[table["failed"] > 0]
        notes.extend(f"{r.model}: {r.failed} failed run(s)." for r in failed.itertuples())
    return ["", *[f"- {n}" for n in notes]] if notes else []


def significance_markdown(
    board: Board, metrics: list[str] | None = None, csv_name: str | None = None
) -> str:
    """The paired tests of ``metrics`` (default: the primary metric) as a markdown table;
    ``csv_name`` is where the full table lies (default: the leaderboard's CSV)."""
    sig = board.significance
    metrics = metrics or ([board.primary] if board.primary else [])
    level = f"{stats.CONFIDENCE:.0%}"
    interval_methods = "t-interval"
    if board.primary:
        interval_methods = (
            f"percentile bootstrap over users, {stats.BOOTSTRAP_RESAMPLES} resamples with a "
            f"fixed seed, for {board.primary}; t-interval for the other metrics"
        )
    intro = (
        "Paired tests on per-user test values: users paired by id (those evaluated for both "
        "models), each user's value averaged over a model's seeds first. Two-sided paired "
        "t-test and Wilcoxon signed-rank test (zero differences dropped); the "
        f"{TEST_NAMES[board.test]} decides the markers. p-values Holm-adjusted over the models "
        f"compared with the same reference on the same metric and test; alpha {board.alpha}. "
        "Differences, intervals and effect sizes are model minus reference: "
        f"{level} CI of the mean difference ({interval_methods}), Cohen's d_z (t-test) and "
        "rank-biserial correlation r (Wilcoxon). "
        f"All metric@k: `{csv_name or board.dataset + '.significance.csv'}`."
    )
    rows = sig[sig["metric"].isin(metrics)] if not sig.empty else sig
    if rows.empty:
        return intro + "\n\nNo tests: fewer than two models with per-user values."
    header = (
        f"| model | reference | metric | n users | mean diff | {level} CI | t | p | p Holm | d "
        "| Wilcoxon W | p | p Holm | r |"
    )
    lines = [intro, "", header, "|---|---|---|" + "---:|" * 11]
    tt = rows[rows["test"] == "t"].set_index(["model", "reference", "metric"])
    wil = rows[rows["test"] == "wilcoxon"].set_index(["model", "reference", "metric"])
    for key, t in tt.iterrows():
        w = wil.loc[key]
        model, reference, metric = key
        lines.append(
            f"| {model} | {reference} ({t['role']}) | {metric} | {t['n_users']} | "
            f"{t['mean_diff']:+.4f} | {_interval(t['ci_low'], t['ci_high'])} | "
            f"{_g(t['statistic'])} | {_p(t['p_value'])} | {_p(t['p_holm'])}{_star(t)} | "
            f"{_g(t['effect_size'])} | {_g(w['statistic'])} | {_p(w['p_value'])} | "
            f"{_p(w['p_holm'])}{_star(w)} | {w['effect_size']:+.3f} |"
        )
    lines += ["", f"\\* Holm-adjusted p < {board.alpha}."]
    return "\n".join(lines)


def _star(row: pd.Series) -> str:
    return " *" if row["significant"] else ""


def _interval(low: float, high: float) -> str:
    return "" if pd.isna(low) or pd.isna(high) else f"[{low:+.4f}, {high:+.4f}]"


def _describe_protocol(p: dict[str, Any]) -> str:
    split = p.get("split") or {}
    split_text = ", ".join(f"{k} {v}" for k, v in split.items()) if split else "?"
    if split == {"LS": "valid_and_test"}:
        split_text += " (leave-one-out: last item test, second-last validation)"
    order = {"TO": "by time", "RO": "random"}.get(p.get("order") or "", "")
    mode = p.get("mode")
    mode_text = (
        ", ".join(f"{k}: {v}" for k, v in mode.items()) if isinstance(mode, dict) else str(mode)
    )
    # filter_inter_by_user_or_item only matters with .user/.item filters: the JSON keeps it.
    filters = {
        k: v
        for k, v in (p.get("filters") or {}).items()
        if v not in (None, False) and k != "filter_inter_by_user_or_item"
    }
    filter_text = ", ".join(f"{k}={v}" for k, v in filters.items()) or "none"
    excluded = "yes" if p.get("exclude_history_items") else "no"
    full_note = " ('full' ranks every item)" if "full" in mode_text else ""
    parts = [
        f"split {split_text}",
        f"order {p.get('order')}{f' ({order})' if order else ''}",
        f"grouped by {p.get('group_by') or 'none'}",
        f"ranking {mode_text}{full_note}",
        f"filters: {filter_text}",
        f"history items excluded from the ranking: {excluded}",
        f"validation metric {p.get('valid_metric')}",
        f"metrics {', '.join(p.get('metrics') or [])} at {p.get('topk')}",
    ]
    if p.get("max_sequence_length") is not None:
        parts.insert(5, f"max sequence length {p['max_sequence_length']} (sequential models)")
    if p.get("eval_user_limit"):
        parts.append(f"evaluated on {p['eval_user_limit']} sampled users")
    return "; ".join(parts)


def provenance_markdown(board: Board, json_name: str | None = None) -> str:
    """Protocol, data, runs, code, packages, hardware and config hashes as a bullet list."""
    prov = board.provenance
    lines = []
    p = prov.get("protocol")
    if p and any(p.get(k) is not None for k in ("split", "order", "mode")):
        lines.append(f"- Protocol: {_describe_protocol(p)}.")
    elif not prov.get("protocols"):
        lines.append("- Protocol: not recorded in the results.")
    for i, p in enumerate(prov.get("protocols") or []):
        models = sorted({r["model"] for r in board.ok if _compatible(protocol(r), p)})
        lines.append(f"- Protocol {i + 1} ({', '.join(models)}): {_describe_protocol(p)}.")
    fingerprints = prov.get("dataset_fingerprints", [])
    for fp in fingerprints:
        who = f" ({', '.join(fp['models'])})" if len(fingerprints) > 1 else ""
        if fp["digest"] is None:
            lines.append(f"- Dataset{who}: no fingerprint recorded.")
            continue
        files = ", ".join(f"{n} {h[:12]}" for n, h in sorted((fp.get("sha256") or {}).items()))
        lines.append(
            f"- Dataset{who}: fingerprint `{fp['digest']}` (sha256 of the files: {files}); "
            f"{fp.get('users')} users, {fp.get('items')} items, "
            f"{fp.get('interactions')} interactions"
            + (f"; from {fp['source']}." if fp.get("source") else ".")
        )
    runs = prov.get("runs", {})
    when = ""
    if runs.get("first_finished_at"):
        when = f"; finished between {runs['first_finished_at']} and {runs['last_finished_at']}"
    lines.append(f"- Runs: {runs.get('ok', 0)} successful, {runs.get('failed', 0)} failed{when}.")
    commits = ", ".join(f"`{c}`" for c in prov.get("git_commits", []) if c)
    lines.append(f"- Code: commit {commits or 'unknown'}.")
    packages = ", ".join(f"{k} {'/'.join(v)}" for k, v in prov.get("packages", {}).items())
    python = "/".join(str(v) for v in prov.get("python", []) if v)
    lines.append(
        f"- Packages: {packages or 'unknown'}" + (f"; Python {python}." if python else ".")
    )
    for h in prov.get("hardware", []):
        m = h["machine"]
        if not any(m.values()):
            continue
        who = f" ({', '.join(h['models'])})" if len(prov["hardware"]) > 1 else ""
        lines.append(
            f"- Hardware{who}: {m.get('device')} ({m.get('device_name')}), "
            f"{m.get('cpu_count')} CPUs" + (f", {m['platform']}." if m.get("platform") else ".")
        )
    hashes = "; ".join(
        f"{model} `{', '.join(str(h) for h in info['config_hashes'])}`"
        for model, info in prov.get("models", {}).items()
        if info["config_hashes"]
    )
    if hashes:
        lines.append(f"- Config hashes: {hashes}.")
    json_name = json_name or board.dataset + ".provenance.json"
    if prov.get("rebuild_command"):
        lines.append(
            f"- Rebuilt by `{prov['rebuild_command']}`; each row's runs came from the command "
            f"lines under `models.<row>.commands` in `{json_name}`."
        )
    lines.append(f"- Full record: `{json_name}`.")
    return "\n".join(lines)


def to_markdown(board: Board) -> str:
    """The leaderboard document: table, significance, provenance."""
    parts = [
        f"# Leaderboard: {board.dataset}",
        "",
        table_markdown(board),
        "",
        f"## Significance ({board.primary})" if board.primary else "## Significance",
        "",
        significance_markdown(board),
        "",
        "## Provenance",
        "",
        provenance_markdown(board),
    ]
    return "\n".join(parts) + "\n"


def write(
    out: str | os.PathLike,
    dataset: str,
    baseline: str | None = None,
    test: str = stats.DEFAULT_TEST,
) -> tuple[Path, Path] | None:
    """Write ``<out>/leaderboard/<dataset>.csv``, ``.md``, ``.significance.csv`` and
    ``.provenance.json``; return the CSV and markdown paths, or None if there are no results.
    ``test`` (``t`` or ``wilcoxon``) decides the significance markers."""
    board = compute(out, dataset, baseline, test=test)
    if board is None:
        return None
    folder = Path(out) / "leaderboard"
    csv_path = write_text(folder / f"{dataset}.csv", board.table.to_csv(index=False))
    write_text(folder / f"{dataset}.significance.csv", board.significance.to_csv(index=False))
    write_json(folder / f"{dataset}.provenance.json", board.provenance)
    md_path = write_text(folder / f"{dataset}.md", to_markdown(board))
    return csv_path, md_path


def _written_statistics(out: str | os.PathLike, dataset: str) -> dict[str, Any]:
    path = Path(out) / "leaderboard" / f"{dataset}.provenance.json"
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return written.get("statistics") or {}


def written_baseline(out: str | os.PathLike, dataset: str) -> str | None:
    """The baseline the dataset's leaderboard on disk was built with, if any."""
    return _written_statistics(out, dataset).get("baseline")


def written_test(out: str | os.PathLike, dataset: str) -> str:
    """The test that decided the markers of the dataset's leaderboard on disk (the default for
    a board written before the choice existed, or none)."""
    test = _written_statistics(out, dataset).get("marker_test")
    return test if test in stats.TESTS else stats.DEFAULT_TEST


def refresh(out: str | os.PathLike, dataset: str) -> tuple[Path, Path] | None:
    """Rebuild a leaderboard after new runs, keeping the baseline and the marker test it was
    built with (``bench leaderboard --baseline --test`` chose them); the baseline is dropped
    only if it has no successful run now."""
    baseline = written_baseline(out, dataset)
    test = written_test(out, dataset)
    try:
        return write(out, dataset, baseline, test)
    except BenchError:
        if baseline is None:
            raise
        return write(out, dataset, test=test)


def datasets_with_results(out: str | os.PathLike) -> list[str]:
    root = Path(out) / "runs"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
