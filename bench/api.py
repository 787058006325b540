"""The Python API behind the CLI; a notebook calls the same functions::

import bench
summary = bench.run(["Pop", "SASRec"], "ml-100k", epochs=1, out="results")
summary.leaderboard  # path of the markdown leaderboard
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import configs, leaderboard, results
from bench.errors import BenchError
from bench.runner import (
    PreparedRun,
    RunRequest,
    check_settings,
    prepare,
    resume_settings,
    run_safely,
)


@dataclass
class RunSummary:
    """What :func:`run` did: one entry per (model, seed), and the leaderboard it refreshed."""

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    leaderboard_csv: Path | None = None
    leaderboard: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] != "ok"]


def resolve_models(models: str | Sequence[str], dataset: str) -> list[str]:
    """``"all"`` -> the dataset's suite; ``"A,B"`` or ``["A", "B"]`` -> those names."""
    names = models.split(",") if isinstance(models, str) else list(models)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return configs.suite(dataset)
    if not names:
        raise BenchError("no model given (--models all or --models A,B)")
    return names


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_run_name(name: str, models: list[str]) -> None:
    """A run name labels one model's runs and becomes a folder: letters, digits, ``._+-``."""
    if len(models) != 1:
        raise BenchError(f"--name labels one model's runs, but {len(models)} models were given")
    if not _RUN_NAME.fullmatch(name):
        raise BenchError(f"run name {name!r}: use letters, digits and . _ + - (at most 100)")


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
) -> RunSummary:
    """Train and evaluate every (model, seed) on ``dataset``, write one result each under
    ``<out>/runs`` and refresh ``<out>/leaderboard/<dataset>.{csv,md}``.

    Every run is checked (names, configs, settings, data files) before the first one trains, so
    bad input fails fast with a :class:`BenchError`. A run that raises is recorded as failed and
    the others go on.

    While a run trains, its state after every epoch is kept under ``<out>/checkpoints``; with
    ``resume`` a run whose result exists (same settings, not cut by a smaller budget) is skipped
    and one that was killed or cut by its budget continues from its last epoch.
    """
    out = Path(out)
    overrides = dict(settings or {})
    if epochs is not None:
        overrides["epochs"] = epochs
    for path in config_files:
        configs.load_yaml(path)
    if not seeds:
        raise BenchError("no seed given")
    model_names = resolve_models(models, dataset)
    if name is not None:
        check_run_name(name, model_names)
    cache_dir = out / "cache" / "datasets"
    prepared_runs: list[PreparedRun] = []
    planned: list[PreparedRun] = []
    summary = RunSummary()
    for model in model_names:
        for seed in seeds:
            request = RunRequest(
                dataset=dataset,
                model=model,
                seed=int(seed),
                settings=overrides,
                config_files=[Path(p) for p in config_files],
                quick=quick,
                tuned=tuned,
                device=device,
                data_dir=str(data_dir) if data_dir is not None else None,
                cache_dir=cache_dir,
                name=name,
                checkpoint_root=out / "checkpoints",
                resume=resume,
            )
            prepared = prepare(request)
            prepared_runs.append(prepared)
            label = name or prepared.spec.name
            if resume and results.completed(
                out, dataset, label, int(seed), resume_settings(prepared)
            ):
                summary.skipped.append((label, int(seed)))
                continue
            planned.append(prepared)

    check_settings(overrides, prepared_runs)
    reporter = _ProgressReporter(len(planned)) if progress else None
    with reporter.live() if reporter else nullcontext():
        for prepared in planned:
            hook = reporter.start_run(prepared) if reporter else None
            result = run_safely(prepared, command=command, train_epoch_hook=hook)
            results.write_result(out, result)
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
        request = prepared.request
        total = int(prepared.config_dict.get("epochs", 1))
        label = f"{prepared.spec.name} seed {request.seed}"
        if self.epochs is not None:
            self.progress.remove_task(self.epochs)
        self.epochs = self.progress.add_task(label, total=total, info="")

        def hook(epoch: int, record: Any) -> None:
            self.progress.update(
                self.epochs, completed=epoch + 1, info=f"loss {record.train_loss:.4f}"
            )

        return hook

    def finish_run(self, result: dict[str, Any]) -> None:
        if result["status"] == "ok":
            metric = result.get("valid_metric") or ""
            info = f"test {metric} {result['test'].get(metric, float('nan')):.4f}"
        else:
            info = f"FAILED: {result['error']['type']}"
        self.progress.update(self.epochs, completed=self.progress.tasks[-1].total, info=info)
        self.progress.advance(self.runs)
        self.progress.console.print(f"{result['model']} seed {result['seed']}: {info}")
