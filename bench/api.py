"""The Python API behind the CLI; a notebook calls the same functions::

import bench
summary = bench.run(["Pop", "SASRec"], "ml-100k", epochs=1, out="results")
summary.leaderboard  # path of the markdown leaderboard
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import configs, leaderboard
from bench.configs import ConfigTree
from bench.contract import RunResult, completed, write_result
from bench.preflight import PreparedRun, preflight, resolve_models, resume_settings
from bench.runner import run_safely


@dataclass
class RunSummary:
    """What :func:`run` did: one entry per (model, seed), and the leaderboard it refreshed."""

    results: list[RunResult] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    leaderboard_csv: Path | None = None
    leaderboard: Path | None = None

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if not r.ok]


def run(
    models: str | Sequence[str],
    dataset: str,
    *,
    seeds: Sequence[int] = (0,),
    epochs: int | None = None,
    quick: bool = False,
    tuned: bool = False,
    settings: dict[str, Any] | None = None,
    config_files: Sequence[str | os.PathLike] = (),
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike = "results",
    resume: bool = False,
    progress: bool = False,
    command: str | None = None,
    name: str | None = None,
    config_tree: ConfigTree | None = None,
) -> RunSummary:
    """Train and evaluate every (model, seed) on ``dataset``, write one result each under
    ``<out>/runs`` and refresh ``<out>/leaderboard/<dataset>.{csv,md}``.

    Every run is checked (names, configs, settings, data files) before the first one trains, so
    bad input fails fast with a :class:`BenchError`. A run that raises is recorded as failed and
    the others go on. ``tuned`` layers ``bench tune``'s ``<out>/tuned/<dataset>/<Model>.yaml``
    over each model's defaults; ``config_tree`` is the configuration to read (default: the
    repository's, or ``$BENCH_CONFIG_DIR``).

    While a run trains, its state after every epoch is kept under ``<out>/checkpoints``; with
    ``resume`` a run whose result exists (same settings, not cut by a smaller budget) is skipped
    and one that was killed or cut by its budget continues from its last epoch.
    """
    out = Path(out)
    tree = config_tree or ConfigTree.default()
    checked = preflight(
        resolve_models(models, dataset, tree),
        dataset,
        seeds=seeds,
        settings=settings,
        epochs=epochs,
        config_files=config_files,
        quick=quick,
        tuned_from=configs.tuned_folder(out) if tuned else None,
        device=device,
        data_dir=data_dir,
        cache_dir=out / "cache" / "datasets",
        name=name,
        checkpoint_root=out / "checkpoints",
        resume=resume,
        config_tree=tree,
    )
    summary = RunSummary()
    planned: list[PreparedRun] = []
    for prepared in checked.runs:
        options = prepared.options
        if resume and completed(
            out, dataset, options.label, options.seed, resume_settings(prepared)
        ):
            summary.skipped.append((options.label, options.seed))
            continue
        planned.append(prepared)

    reporter = _ProgressReporter(len(planned)) if progress else None
    with reporter.live() if reporter else nullcontext():
        for prepared in planned:
            hook = reporter.start_run(prepared) if reporter else None
            result = run_safely(prepared, command=command, train_epoch_hook=hook)
            write_result(out, result)
            summary.results.append(result)
            if reporter:
                reporter.finish_run(result)
    written = leaderboard.refresh(out, dataset)
    if written is not None:
        summary.leaderboard_csv, summary.leaderboard = written
    return summary


class _ProgressReporter:
    """rich progress bars: one for the runs as a whole, one for the epochs of the current run."""

    def __init__(self, total_runs: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.runs = self.progress.add_task("runs", total=total_runs, info="")
        self.epochs: Any = None

    def live(self) -> Any:
        return self.progress

    def start_run(self, prepared: PreparedRun) -> Any:
        total = int(prepared.config_dict.get("epochs", 1))
        label = f"{prepared.spec.name} seed {prepared.options.seed}"
        if self.epochs is not None:
            self.progress.remove_task(self.epochs)
        self.epochs = self.progress.add_task(label, total=total, info="")

        def hook(epoch: int, record: Any) -> None:
            self.progress.update(
                self.epochs, completed=epoch + 1, info=f"loss {record.train_loss:.4f}"
            )

        return hook

    def finish_run(self, result: RunResult) -> None:
        if result.ok:
            metric = result.valid_metric or ""
            info = f"test {metric} {result.test.get(metric, float('nan')):.4f}"
        else:
            info = f"FAILED: {result.error.type if result.error else '?'}"
        self.progress.update(self.epochs, completed=self.progress.tasks[-1].total, info=info)
        self.progress.advance(self.runs)
        self.progress.console.print(f"{result.model} seed {result.seed}: {info}")
