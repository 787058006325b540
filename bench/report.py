"""A self-contained markdown report of one dataset's results:

``<results>/reports/<dataset>/report.md``            leaderboard, significance, training time,
                                                     figures (relative links), provenance
``<results>/reports/<dataset>/figures/*.png|svg``    learning curves, main metric, metric@K
``<results>/reports/<dataset>/significance.csv``     every paired test
``<results>/reports/<dataset>/provenance.json``      what produced the numbers
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench import leaderboard, plots, stats
from bench.errors import BenchError
from bench.io import write_json, write_text


def _timing_markdown(board: leaderboard.Board) -> str:
    lines = [
        "Mean ± sample std over seeds. Fit: the whole training, validation epochs included; "
        "per epoch: the recorded training and validation seconds of each epoch; test: the "
        "final evaluation. Epochs run include those after the best one (early stopping "
        "patience); epochs count from 0.",
        "",
        "| model | seeds | epochs run | best epoch | fit s | train s / epoch | valid s / epoch "
        "| test s | total s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(values: list[Any], digits: int = 1) -> str:
        mean, std, n = stats.mean_std(v for v in values if v is not None)
        if n == 0:
            return ""
        return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"

    def per_epoch(run: dict[str, Any], key: str) -> float | None:
        values = [e.get(key) for e in run.get("epochs") or [] if e.get(key) is not None]
        return sum(values) / len(values) if values else None

    for model in board.table["model"]:
        runs = [r for r in board.ok if r["model"] == model]
        if not runs:
            continue
        timing = [r.get("timing") or {} for r in runs]
        lines.append(
            f"| {model} | {len(runs)} | {cell([len(r.get('epochs') or []) for r in runs])} | "
            f"{cell([r.get('best_epoch') for r in runs])} | "
            f"{cell([t.get('train_seconds') for t in timing])} | "
            f"{cell([per_epoch(r, 'train_seconds') for r in runs], 2)} | "
            f"{cell([per_epoch(r, 'valid_seconds') for r in runs], 2)} | "
            f"{cell([t.get('eval_seconds') for t in timing])} | "
            f"{cell([t.get('total_seconds') for t in timing])} |"
        )
    return "\n".join(lines)


def _figure_markdown(title: str, paths: list[Path], folder: Path, caption: str) -> str:
    png, svg = (p.relative_to(folder).as_posix() for p in paths)
    return f"### {title}\n\n![{title}]({png})\n\n{caption} ([SVG]({svg}))"


def write_report(
    out: str | os.PathLike,
    dataset: str,
    baseline: str | None = None,
    test: str = stats.DEFAULT_TEST,
) -> Path:
    """Write the report of ``dataset`` under ``<out>/reports/<dataset>/``; return report.md.
    ``test`` (``t`` or ``wilcoxon``) decides the significance markers.

    Raises :class:`BenchError` when there is no successful result, the baseline or the test is
    unknown.
    """
    out = Path(out)
    board = leaderboard.compute(out, dataset, baseline, test=test)
    if board is None:
        raise BenchError(f"no results for dataset {dataset!r} under {out / 'runs'}")
    if not board.ok:
        raise BenchError(f"no successful run for dataset {dataset!r} under {out / 'runs'}")
    board.provenance["rebuild_command"] = leaderboard.rebuild_command(
        "report", out, dataset, baseline, test
    )
    folder = out / "reports" / dataset
    figures = folder / "figures"
    models = list(board.table.loc[board.table["seeds"] > 0, "model"])
    figure_parts: list[str] = []
    curves = plots.learning_curves(board.ok, figures, models=models)
    figure_parts.append(
        _figure_markdown(
            "Validation learning curves",
            curves,
            folder,
            f"Validation {board.primary} per epoch: mean over seeds, band from the lowest to "
            "the highest seed.",
        )
    )
    kl = plots.kl_curves(board.ok, figures, models=models)
    if kl:
        figure_parts.append(
            _figure_markdown(
                "KL terms per epoch",
                kl,
                folder,
                "The KL term(s) of every model that records them, epoch means, mean over seeds "
                "(log scale): a term that falls towards 0 means the posterior collapsed to the "
                "prior.",
            )
        )
    if board.primary:
        bars = plots.metric_bars(board.table, board.primary, figures)
        figure_parts.append(
            _figure_markdown(
                f"Test {board.primary}",
                bars,
                folder,
                f"Test {board.primary} per model: mean over seeds, error bars one sample "
                "standard deviation (none for a single seed).",
            )
        )
    at_k = plots.metric_at_k(board.table, figures)
    figure_parts.append(
        _figure_markdown(
            "Metrics at K", at_k, folder, "Test metric against the cutoff K, mean over seeds."
        )
    )
    write_text(folder / "significance.csv", board.significance.to_csv(index=False))
    write_json(folder / "provenance.json", board.provenance)
    text = _report_text(board, figure_parts)
    return write_text(folder / "report.md", text)


def _report_text(board: leaderboard.Board, figure_parts: list[str]) -> str:
    prov: dict[str, Any] = board.provenance
    runs = prov.get("runs", {})
    summary = (
        f"{len(board.table)} model(s), {runs.get('ok', 0)} successful run(s), "
        f"{runs.get('failed', 0)} failed; runs finished between "
        f"{runs.get('first_finished_at')} and {runs.get('last_finished_at')}."
    )
    if board.best:
        summary += f" Best on test {board.primary}: {board.best}."
    if board.baseline:
        summary += f" Baseline: {board.baseline}."
    sig = board.significance
    all_metrics = sorted(set(sig["metric"]), key=leaderboard._metric_sort_key)
    parts = [
        f"# Benchmark report: {board.dataset}",
        "",
        summary,
        "",
        "## Leaderboard",
        "",
        leaderboard.table_markdown(board),
        "",
        f"## Significance ({board.primary})" if board.primary else "## Significance",
        "",
        leaderboard.significance_markdown(board, csv_name="significance.csv"),
    ]
    if len(all_metrics) > 1:
        parts += [
            "",
            "<details><summary>All metrics</summary>",
            "",
            leaderboard.significance_markdown(board, all_metrics, csv_name="significance.csv"),
            "",
            "</details>",
        ]
    parts += [
        "",
        "## Training time",
        "",
        _timing_markdown(board),
        "",
        "## Figures",
        "",
        "\n\n".join(figure_parts),
        "",
        "## Provenance",
        "",
        leaderboard.provenance_markdown(board, json_name="provenance.json"),
    ]
    return "\n".join(parts) + "\n"
