"""A markdown report of one dataset's results, beside its leaderboard:

``<results>/reports/<dataset>/report.md``            leaderboard, significance, training time,
                                                     figures (relative links), provenance
``<results>/reports/<dataset>/figures/*.png|svg``    learning curves, main metric, metric@K

The full significance table and the provenance record are the leaderboard's own files
(``<results>/leaderboard/<dataset>.significance.csv`` and ``.provenance.json``): the report
writes the leaderboard with the same baseline and test, then links to them instead of keeping
copies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import leaderboard, plots, stats
from bench.contract import RunResult, Timing, runs_dir
from bench.errors import BenchError
from bench.io import write_text
from bench.leaderboard.board import bigger_is_better
from bench.leaderboard.render import markdown_table


def _timing_markdown(board: leaderboard.Board) -> str:
    intro = (
        "Mean ± sample std over seeds. Fit: the whole training, validation epochs included "
        "(a resumed run's earlier sittings too, in total s as well); "
        "per epoch: the recorded training and validation seconds of each epoch; test: the "
        "final evaluation. Epochs run include those after the best one (early stopping "
        "patience); epochs count from 0."
    )
    header = [
        "model",
        "seeds",
        "epochs run",
        "best epoch",
        "fit s",
        "train s / epoch",
        "valid s / epoch",
        "test s",
        "total s",
    ]

    def cell(values: list[Any], digits: int = 1) -> str:
        mean, std, n = stats.mean_std(v for v in values if v is not None)
        if n == 0:
            return ""
        return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"

    def epoch_mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    rows = []
    for model in board.table["model"]:
        runs = [r for r in board.ok if r.model == model]
        if not runs:
            continue
        timings = [r.timing or Timing() for r in runs]
        rows.append(
            [
                str(model),
                str(len(runs)),
                cell([r.epochs_run for r in runs]),
                cell([r.best_epoch for r in runs]),
                cell([t.train_seconds_all_sittings for t in timings]),
                cell([epoch_mean([e.train_seconds for e in r.epochs]) for r in runs], 2),
                cell([epoch_mean([e.valid_seconds for e in r.epochs]) for r in runs], 2),
                cell([t.eval_seconds for t in timings]),
                cell([t.total_seconds_all_sittings for t in timings]),
            ]
        )
    table = markdown_table(header, rows, [False] + [True] * (len(header) - 1))
    return "\n".join([intro, "", *table])


def trend_after_best(result: RunResult, bigger: bool = True) -> float | None:
    """How the validation metric moved after a run's best epoch, up to its last: the
    least-squares slope over those validations, per 10 epochs, as a fraction of the best value
    (negative when it fell, as the stopping rule expects; positive when the run was still rising
    through noise when its patience ran out). None without three validations after the best.
    ``bigger``: whether a larger value of the metric is better."""
    import numpy as np

    validated = [(e.epoch, e.valid_score) for e in result.epochs if e.valid_score is not None]
    if result.best_epoch is None or not validated:
        return None
    after = [(epoch, score) for epoch, score in validated if epoch > result.best_epoch]
    best = dict(validated).get(result.best_epoch)
    if len(after) < 3 or not best:
        return None
    epochs, scores = (np.array(v, dtype=float) for v in zip(*after, strict=True))
    slope = float(np.polyfit(epochs, scores, 1)[0]) * 10 / abs(best)
    return slope if bigger else -slope


def _stopping_markdown(board: leaderboard.Board) -> str | None:
    """Per model whose runs ended by early stopping: how the validation metric moved after the
    best epoch (:func:`trend_after_best`). None when no run ended that way."""
    rows = []
    for model in board.table["model"]:
        stopped = [r for r in board.ok if r.model == model and r.stop_reason == "early_stopping"]
        trends = [trend_after_best(r, bigger_is_better(r.valid_metric or "")) for r in stopped]
        trends = [t for t in trends if t is not None]
        if not trends:
            continue
        per_run = ", ".join(f"{100 * t:+.1f}" for t in trends)
        rising = sum(t > 0 for t in trends)
        rows.append([str(model), str(len(stopped)), per_run, f"{rising} of {len(trends)}"])
    if not rows:
        return None
    intro = (
        "Runs that ended by early stopping: the least-squares slope of the validation metric "
        "over the epochs after each run's best one, per 10 epochs, in % of the best value. "
        "Negative: it fell after its best, as the stopping rule assumes; positive: it was still "
        "rising through epoch-to-epoch noise when the patience ran out, so a longer patience "
        "might have found a higher best."
    )
    trend = "trend after the best (%/10 epochs, each run)"
    header = ["model", "runs stopped early", trend, "rising"]
    table = markdown_table(header, rows, [False, True, False, True])
    return "\n".join([intro, "", *table])


def _figure_markdown(title: str, paths: list[Path], folder: Path, caption: str) -> str:
    png, svg = (p.relative_to(folder).as_posix() for p in paths)
    return f"### {title}\n\n![{title}]({png})\n\n{caption} ([SVG]({svg}))"


def write_report(
    out: str | os.PathLike,
    dataset: str,
    baseline: str | None = None,
    test: str = stats.DEFAULT_TEST,
    pairs: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write the leaderboard of ``dataset`` (as ``bench leaderboard`` does with this
    ``baseline`` and ``test``) and its report under ``<out>/reports/<dataset>/``, which links
    to the leaderboard's significance table and provenance record; return report.md. ``test``
    (``t`` or ``wilcoxon``) decides the significance markers. ``pairs`` of (model, reference)
    get their own paired tests in the report, also written to ``pairs.csv`` beside it.

    Raises :class:`BenchError` when there is no successful result, the baseline, a paired
    model or the test is unknown.
    """
    out = Path(out)
    pairs = list(pairs)
    board = leaderboard.compute(out, dataset, baseline, test=test, pairs=pairs)
    if board is None:
        raise BenchError(f"no results for dataset {dataset!r} under {runs_dir(out)}")
    if not board.ok:
        raise BenchError(f"no successful run for dataset {dataset!r} under {runs_dir(out)}")
    leaderboard.write_board(out, board)
    folder = out / "reports" / dataset
    figures = folder / "figures"
    pairs_csv = folder / "pairs.csv"
    if board.pair_tests is not None:
        write_text(pairs_csv, board.pair_tests.to_csv(index=False))
    elif pairs_csv.exists():  # a report written again without pairs drops the old file
        pairs_csv.unlink()
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
    # The report's own text says how to write it again; the leaderboard's files keep theirs.
    board.provenance = {
        **board.provenance,
        "rebuild_command": leaderboard.rebuild_command(
            "report", out, dataset, baseline, test, pairs
        ),
    }
    text = _report_text(board, figure_parts, _links(out, dataset, folder))
    return write_text(folder / "report.md", text)


def _links(out: Path, dataset: str, folder: Path) -> dict[str, str]:
    """Markdown links from the report's folder to the leaderboard's files."""
    links = {}
    for key, path in leaderboard.files(out, dataset).items():
        target = Path(os.path.relpath(path, folder)).as_posix()
        links[key] = f"[`{path.relative_to(out).as_posix()}`]({target})"
    return links


def _tests_section(
    board: leaderboard.Board, title: str, csv_ref: str, all_metrics: list[str], pairs: bool
) -> list[str]:
    """A report section of paired tests: the primary metric's, then every metric's, folded."""
    heading = f"## {title} ({board.primary})" if board.primary else f"## {title}"
    parts = ["", heading, "", leaderboard.significance_markdown(board, None, csv_ref, pairs)]
    if len(all_metrics) > 1:
        folded = leaderboard.significance_markdown(board, all_metrics, csv_ref, pairs)
        parts += ["", "<details><summary>All metrics</summary>", "", folded, "", "</details>"]
    return parts


def _report_text(board: leaderboard.Board, figure_parts: list[str], links: dict[str, str]) -> str:
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
    all_metrics = sorted(set(sig["metric"]), key=leaderboard.metric_sort_key)
    parts = [
        f"# Benchmark report: {board.dataset}",
        "",
        summary,
        "",
        "## Leaderboard",
        "",
        leaderboard.table_markdown(board),
    ]
    parts += _tests_section(board, "Significance", links["significance"], all_metrics, False)
    if board.pair_tests is not None:
        pairs_ref = "[`pairs.csv`](pairs.csv)"
        parts += _tests_section(board, "Paired comparisons", pairs_ref, all_metrics, True)
    parts += [
        "",
        "## Training time",
        "",
        _timing_markdown(board),
        "",
    ]
    stopping = _stopping_markdown(board)
    if stopping is not None:
        parts += ["## How early stopping ended the runs", "", stopping, ""]
    parts += [
        "## Figures",
        "",
        "\n\n".join(figure_parts),
        "",
        "## Provenance",
        "",
        leaderboard.provenance_markdown(board, json_ref=links["provenance"]),
    ]
    return "\n".join(parts) + "\n"
