"""Leaderboards from per-run results: one row per model, test metrics over seeds.

``<out>/leaderboard/<dataset>.csv``               full precision: mean and std per test metric,
                                                  how each row's runs stopped
``<out>/leaderboard/<dataset>.md``                mean ± std, best/second best marked, paired
                                                  significance against the best model (and a
                                                  baseline), seed-noise flags, stop reasons,
                                                  protocol and provenance
``<out>/leaderboard/<dataset>.significance.csv``  every paired test with the confidence interval
                                                  of the mean difference (see :mod:`bench.stats`)
``<out>/leaderboard/<dataset>.provenance.json``   what produced the numbers

Runs that failed are counted, never averaged. Rows whose seeds ran with different configs, code
versions or data files are flagged. ``docs/statistics.md`` explains the statistics.

The package: :mod:`~bench.leaderboard.board` aggregates, :mod:`~bench.leaderboard.provenance`
records what produced a board, :mod:`~bench.leaderboard.render` writes markdown (and holds the
project's one table writer); this module computes a board and writes its files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import stats
from bench.contract import load_results, runs_dir
from bench.errors import BenchError
from bench.io import write_json, write_text
from bench.leaderboard.board import (
    Board,
    build,
    metric_names,
    metric_sort_key,
    per_user_values,
    primary_metric,
)
from bench.leaderboard.provenance import provenance
from bench.leaderboard.render import (
    provenance_markdown,
    significance_markdown,
    table_markdown,
    to_markdown,
)

__all__ = [
    "Board",
    "build",
    "compute",
    "datasets_with_results",
    "files",
    "metric_sort_key",
    "per_user_values",
    "provenance_markdown",
    "rebuild_command",
    "refresh",
    "significance_markdown",
    "table_markdown",
    "write",
    "write_board",
    "written_baseline",
    "written_test",
]


def compute(
    out: str | os.PathLike,
    dataset: str,
    baseline: str | None = None,
    alpha: float = stats.ALPHA,
    test: str = stats.DEFAULT_TEST,
    pairs: Sequence[tuple[str, str]] = (),
) -> Board | None:
    """The leaderboard, significance tests and provenance of ``dataset``; None if no results.

    ``test`` (``t`` or ``wilcoxon``) decides the significance markers; both are computed.
    ``pairs`` (model, reference) are tested too, into ``Board.pair_tests``. Raises
    :class:`BenchError` when ``baseline`` or a model of ``pairs`` names no model with a
    successful run (or per-user values), or ``test`` is unknown.
    """
    stats.check_test(test)
    results = load_results(out, dataset)
    if not results:
        return None
    table = build(results)
    ok_models = list(table.loc[table["seeds"] > 0, "model"])
    named = [("baseline", baseline)] if baseline is not None else []
    named += [("paired model", m) for m in dict.fromkeys(m for pair in pairs for m in pair)]
    for role, model in named:
        if model not in ok_models:
            known = ", ".join(sorted(set(table["model"])))
            why = "has no successful run" if model in set(table["model"]) else "is unknown"
            raise BenchError(f"{role} {model!r} {why} for dataset {dataset!r} (models: {known})")
    for model, reference in pairs:
        if model == reference:
            raise BenchError(f"pair {model}:{reference} compares a model with itself")
    primary = primary_metric(results)
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
    pair_tests = (
        stats.compare_pairs(per_user, pairs, metrics, alpha, bootstrap_metrics) if pairs else None
    )
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
        pair_tests=pair_tests,
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
    pairs: Sequence[tuple[str, str]] = (),
) -> str:
    """The ``bench leaderboard`` (or ``bench report``) command that writes this again from the
    runs under ``out``."""
    command = f"bench {verb} --results {out} --dataset {dataset}"
    command += f" --baseline {baseline}" if baseline else ""
    command += f" --test {test}" if test != stats.DEFAULT_TEST else ""
    return command + "".join(f" --pair {model}:{reference}" for model, reference in pairs)


def files(out: str | os.PathLike, dataset: str) -> dict[str, Path]:
    """The leaderboard's files of ``dataset``: ``csv``, ``markdown``, ``significance``,
    ``provenance``."""
    folder = Path(out) / "leaderboard"
    return {
        "csv": folder / f"{dataset}.csv",
        "markdown": folder / f"{dataset}.md",
        "significance": folder / f"{dataset}.significance.csv",
        "provenance": folder / f"{dataset}.provenance.json",
    }


def write_board(out: str | os.PathLike, board: Board) -> tuple[Path, Path]:
    """Write a computed board's four files; return the CSV and markdown paths."""
    paths = files(out, board.dataset)
    csv_path = write_text(paths["csv"], board.table.to_csv(index=False))
    write_text(paths["significance"], board.significance.to_csv(index=False))
    write_json(paths["provenance"], board.provenance)
    md_path = write_text(paths["markdown"], to_markdown(board))
    return csv_path, md_path


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
    return write_board(out, board)


def _written_statistics(out: str | os.PathLike, dataset: str) -> dict[str, Any]:
    try:
        written = json.loads(files(out, dataset)["provenance"].read_text(encoding="utf-8"))
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
    root = runs_dir(out)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
