"""The Python API behind the CLI; a notebook calls the same functions::

import bench
summary = bench.run(["Pop", "SASRec"], "ml-100k", epochs=1, out="results")
summary.leaderboard  # path of the markdown leaderboard
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import configs, leaderboard
from bench.configs import ConfigTree
from bench.contract import RunResult, completed, write_result
from bench.errors import BenchError
from bench.executor import RunRequest, is_cluster, make_executor
from bench.preflight import PreparedRun, preflight, resolve_models, resume_settings


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
    workers: int | None = None,
    gpus_per_run: float | None = None,
    ray_address: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> RunSummary:
    """Train and evaluate every (model, seed) on ``dataset``, write one result each under
    ``<out>/runs`` and refresh ``<out>/leaderboard/<dataset>.{csv,md}``.

    Every run is checked (names, configs, settings, data files) before the first one trains, so
    bad input fails fast with a :class:`BenchError`. A run that raises is recorded as failed and
    the others go on. ``tuned`` layers ``bench tune``'s ``<out>/tuned/<dataset>/<Model>.yaml``
    over each model's defaults; ``config_tree`` is the configuration to read (default: the
    repository's, or ``$BENCH_CONFIG_DIR``).

    Runs go through :mod:`bench.executor`: one after another in this process by default;
    ``workers`` > 1 at a time in worker processes; with ``ray_address`` as Ray tasks of
    ``gpus_per_run`` GPUs each. This process alone writes each result and rebuilds the
    leaderboard after it. ``echo`` is told when a lost run is submitted again.

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
        # With a cluster the driver may have no GPU: the workers check the device.
        device="cpu" if is_cluster(ray_address) else device,
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
    if not planned:
        _refresh(out, dataset, summary)
        return summary

    executor = make_executor(workers, gpus_per_run, ray_address)
    if echo is not None:
        executor.on_requeue = lambda request, why: echo(f"re-queued {request.key}: {why}")
    run_device = executor.device_for(device)
    queue = list(planned)
    reporter = _ProgressReporter(len(queue)) if progress else None
    try:
        with reporter.live() if reporter else nullcontext():
            while queue or executor.pending():
                while queue and executor.pending() < executor.capacity:
                    prepared = queue.pop(0)
                    options = replace(prepared.options, device=run_device)
                    request = RunRequest(
                        key=f"{options.label} seed {options.seed}", options=options, command=command
                    )
                    hook = None
                    if reporter and executor.in_process:
                        hook = reporter.start_run(prepared)
                    executor.submit(request, epoch_hook=hook)
                for _request, outcome in executor.wait(timeout=1.0):
                    result = outcome.result
                    if outcome.fatal:  # the run refused its input, as the pre-flight would
                        raise BenchError(result.error.message if result.error else outcome.error)
                    write_result(out, result)
                    summary.results.append(result)
                    _refresh(out, dataset, summary)
                    if reporter:
                        reporter.finish_run(result)
    except BaseException:
        executor.cancel()
        raise
    finally:
        executor.close()
    return summary


def _refresh(out: Path, dataset: str, summary: RunSummary) -> None:
    """Rebuild the dataset's leaderboard (this process is its one writer)."""
    written = leaderboard.refresh(out, dataset)
    if written is not None:
        summary.leaderboard_csv, summary.leaderboard = written


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
        if self.epochs is not None:  # runs in this process have an epoch bar
            self.progress.update(self.epochs, completed=self.progress.tasks[-1].total, info=info)
        self.progress.advance(self.runs)
        self.progress.console.print(f"{result.model} seed {result.seed}: {info}")
