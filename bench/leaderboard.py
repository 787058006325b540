"""Leaderboards from per-run results: one row per model, test metrics averaged over seeds.

``<out>/leaderboard/<dataset>.csv`` holds full-precision numbers; ``.md`` a readable table with
the best value of each metric in bold. Runs that failed are counted, never averaged.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from bench.io import write_text
from bench.results import load_results

_METRIC_ORDER = ("ndcg", "hit", "recall", "mrr", "precision")


def _metric_sort_key(name: str) -> tuple[int, int, str]:
    base, _, k = name.partition("@")
    rank = _METRIC_ORDER.index(base) if base in _METRIC_ORDER else len(_METRIC_ORDER)
    return (rank, int(k) if k.isdigit() else 0, base)


def build(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per model: seeds, failures, mean test metrics, mean best epoch and train time."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_model[result["model"]].append(result)
    rows = []
    for model, runs in by_model.items():
        ok = [r for r in runs if r.get("status") == "ok"]
        row: dict[str, Any] = {
            "model": model,
            "family": ok[0].get("family") if ok else None,
            "seeds": len(ok),
            "failed": len(runs) - len(ok),
            "quick": any(r.get("quick") for r in ok),
            "mixed_config": len({r.get("config_hash") for r in ok}) > 1,
        }
        if ok:
            metrics = pd.DataFrame([r["test"] for r in ok])
            row.update({f"test_{k}": v for k, v in metrics.mean().items()})
            epochs = [r["best_epoch"] for r in ok if r.get("best_epoch") is not None]
            row["best_epoch"] = sum(epochs) / len(epochs) if epochs else None
            row["train_seconds"] = sum(r["timing"]["train_seconds"] for r in ok) / len(ok)
            row["valid_metric"] = ok[0].get("valid_metric")
        else:
            row["error"] = runs[-1].get("error", {}).get("message", "")
        rows.append(row)
    table = pd.DataFrame(rows)
    metric_cols = sorted(
        (c for c in table.columns if c.startswith("test_")),
        key=lambda c: _metric_sort_key(c[len("test_") :]),
    )
    fixed = ["model", "family", "seeds", "failed", "quick", "mixed_config"]
    tail = [c for c in ("best_epoch", "train_seconds", "valid_metric", "error") if c in table]
    table = table[fixed + metric_cols + tail]
    sort_col = _sort_column(table, results)
    if sort_col is not None:
        table = table.sort_values(sort_col, ascending=False, na_position="last")
    return table.reset_index(drop=True)


def _sort_column(table: pd.DataFrame, results: list[dict[str, Any]]) -> str | None:
    valid_metrics = [r.get("valid_metric") for r in results if r.get("valid_metric")]
    if valid_metrics and f"test_{valid_metrics[0]}" in table:
        return f"test_{valid_metrics[0]}"
    metric_cols = [c for c in table.columns if c.startswith("test_")]
    return metric_cols[0] if metric_cols else None


def to_markdown(table: pd.DataFrame, dataset: str) -> str:
    """The table as GitHub markdown, the best value of each test metric in bold."""
    metric_cols = [c for c in table.columns if c.startswith("test_")]
    shown = ["model", "family", "seeds", *metric_cols, "best_epoch", "train_seconds"]
    shown = [c for c in shown if c in table.columns]
    best = {c: table[c].max() for c in metric_cols}
    header = [c.removeprefix("test_") for c in shown]
    lines = [
        f"# Leaderboard: {dataset}",
        "",
        "Test metrics, mean over seeds; best in bold. Model selection on the validation metric.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if c in ("model", "family") else "---:" for c in shown) + "|",
    ]
    for _, row in table.iterrows():
        cells = []
        for col in shown:
            value = row[col]
            if pd.isna(value):
                cells.append("")
            elif col in metric_cols:
                text = f"{value:.4f}"
                cells.append(f"**{text}**" if value == best[col] else text)
            elif col in ("best_epoch", "train_seconds"):
                cells.append(f"{value:.1f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if table["quick"].any():
        notes.append("Rows from `--quick` smoke runs are not comparable with full runs.")
    if table["mixed_config"].any():
        models = ", ".join(table.loc[table["mixed_config"], "model"])
        notes.append(f"Seeds of {models} ran with different configs; their mean mixes them.")
    if table["failed"].any():
        failed = table.loc[table["failed"] > 0]
        notes.extend(f"{r.model}: {r.failed} failed run(s)." for r in failed.itertuples())
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def write(out: str | os.PathLike, dataset: str) -> tuple[Path, Path] | None:
    """Write ``<out>/leaderboard/<dataset>.csv`` and ``.md``; None if there are no results."""
    results = load_results(out, dataset)
    if not results:
        return None
    table = build(results)
    folder = Path(out) / "leaderboard"
    csv_path = write_text(folder / f"{dataset}.csv", table.to_csv(index=False))
    md_path = write_text(folder / f"{dataset}.md", to_markdown(table, dataset))
    return csv_path, md_path


def datasets_with_results(out: str | os.PathLike) -> list[str]:
    root = Path(out) / "runs"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
