"""A plan's progress across sittings (``bench plan PLAN --status``): which of its runs have
finished, where each unfinished one stands (from its last checkpoint: epochs, best validation
score, patience spent, training time) and which have not started. It reads results and
checkpoints under the plan's ``--out`` folder and runs nothing.

A run counts as finished exactly when ``bench plan --resume`` would skip it; a result that does
not answer the plan (a run its time budget cut, or one with other settings) is said beside the
run's state, as is a run with neither result nor checkpoint, which starts from its first epoch.
A two-stage model (S3Rec) still in its pre-training, or between its stages, is unfinished with no
fine-tuning epochs; its note says where the pre-training stands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from bench.checkpoint_parts import manifest_path
from bench.configs import ConfigTree
from bench.contract import RunResult, read_result, run_path
from bench.plans import PlannedRun, is_finished, load_plan, preflight_runs
from recbole_ext import run_state

State = Literal["finished", "unfinished", "not started"]


@dataclass(frozen=True)
class RunProgress:
    """One planned run: its state and what is known of it. ``epochs``: run (finished) or
    finished so far (unfinished); ``patience``: validations without a new best against the
    run's ``stopping_step`` (unfinished; the count is -1 during a warm-up);
    ``warmup``: the epochs early stopping waits for (``stopping_warmup_epochs``);
    ``train_seconds``: every sitting's, a two-stage model's pre-training included
    (``pretrain_seconds``: that stage's share); ``batches_into_epoch``: an unfinished run's
    batches of its next epoch already trained on (a checkpoint taken inside an epoch). A run
    still in its pre-training is unfinished with 0 epochs, its stage's progress in ``note``."""

    run: PlannedRun
    state: State
    epochs: int = 0
    epoch_limit: int | None = None
    best_epoch: int | None = None
    best_valid_score: float | None = None
    patience: tuple[int, int] | None = None
    warmup: int = 0
    train_seconds: float = 0.0
    stop_reason: str | None = None
    test_score: float | None = None
    note: str | None = None
    batches_into_epoch: int | None = None
    pretrain_seconds: float = 0.0


def _finished(run: PlannedRun, result: RunResult, limit: int | None) -> RunProgress:
    metric = str(result.config.get("valid_metric", "")).lower()
    seconds = (result.timing.train_seconds_all_sittings if result.timing else None) or 0.0
    return RunProgress(
        run,
        "finished",
        epochs=len(result.epochs),
        epoch_limit=limit,
        best_epoch=result.best_epoch,
        best_valid_score=result.valid.get(metric),
        train_seconds=seconds,
        stop_reason=result.stop_reason,
        test_score=result.test.get(metric),
    )


def plan_progress(
    plan_path: str | os.PathLike,
    out: str | os.PathLike = "results",
    data_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    config_tree: ConfigTree | None = None,
) -> list[RunProgress]:
    """Every run of the plan at ``plan_path``, in the plan's order, as its results and
    checkpoints under ``out`` stand now."""
    from bench.runner import checkpoint_folder  # PyTorch: only here

    tree = config_tree or ConfigTree.default()
    runs = load_plan(plan_path, tree)
    out = Path(out)
    data = Path(data_dir) if data_dir is not None else None
    prepared = preflight_runs(runs, device, data, tree)
    progress = []
    for run in runs:
        ready = prepared[run.key]
        limit = ready.config_dict.get("epochs")
        result = read_result(run_path(out, run.dataset, run.label, run.seed))
        if is_finished(run, ready, out) and result is not None:
            progress.append(_finished(run, result, limit))
            continue
        notes: list[str] = []
        if result is not None:
            if not result.ok:
                why = "the run failed"
            elif result.stopped_by_budget:
                why = "cut by its time budget"
            else:
                why = "other settings"
            notes.append(f"a result that does not count: {why}")
        options = replace(ready.options, checkpoint_root=out / "checkpoints")
        folder = checkpoint_folder(replace(ready, options=options))
        last = folder / "last.pth" if folder is not None else None
        if last is not None and not last.is_file() and manifest_path(last).is_file():
            notes.append("checkpoint in parts for a git host: --resume joins them")
            note = "; ".join(notes)
            progress.append(RunProgress(run, "unfinished", epoch_limit=limit, note=note))
            continue
        model = ready.spec.cls.__name__
        stage = run_state.pretrain_summary(folder, model) if folder is not None else None
        if (last is None or not last.is_file()) and stage is not None:
            total = ready.config_dict.get("pretrain_epochs")
            if stage.ended:
                notes.append(f"pre-training ended after {stage.epochs} epochs; fine-tuning next")
            else:
                notes.append(f"pre-training: {stage.epochs} / {total} epochs")
            seconds = stage.elapsed_seconds
            progress.append(
                RunProgress(
                    run,
                    "unfinished",
                    epoch_limit=limit,
                    train_seconds=seconds,
                    pretrain_seconds=seconds,
                    note="; ".join(notes),
                )
            )
            continue
        if last is None or not last.is_file():
            if folder is not None:
                others = sorted(f.name for f in folder.parent.glob(f"seed-{run.seed}-*"))
                if others:  # e.g. written by another code version whose defaults differ
                    notes.append(f"a checkpoint of other settings: {', '.join(others)}")
            note = "; ".join(notes) or None
            progress.append(RunProgress(run, "not started", epoch_limit=limit, note=note))
            continue
        where = run_state.summary(last)
        # Fine-tuning's clock counts its own sittings; a finished pre-training adds its own.
        pretraining_seconds = stage.elapsed_seconds if stage is not None else 0.0
        progress.append(
            RunProgress(
                run,
                "unfinished",
                epochs=where.epochs,
                epoch_limit=limit,
                best_epoch=where.best_epoch,
                best_valid_score=where.best_valid_score,
                patience=(where.cur_step, int(ready.config_dict.get("stopping_step") or 0)),
                warmup=ready.settings.stopping_warmup_epochs,
                train_seconds=where.elapsed_seconds + pretraining_seconds,
                note="; ".join(notes) or None,
                batches_into_epoch=where.batches_into_epoch,
                pretrain_seconds=pretraining_seconds,
            )
        )
    return progress


@dataclass(frozen=True)
class Remaining:
    """Training hours a plan still needs, from its runs' own records (core-hours when each run
    holds one thread). Unfinished runs: at their own seconds an epoch, from the fewest epochs
    left (no new best from now: the patience left, after any warm-up) to the most (their epoch
    limit). Not-started runs of a row (dataset and label) with finished runs: the mean training
    time of those. The rest have no measurement (``unmeasured``)."""

    unfinished_min_h: float = 0.0
    unfinished_max_h: float = 0.0
    not_started_h: float = 0.0
    not_started_runs: int = 0
    unmeasured: int = 0


def _epochs_left(p: RunProgress) -> tuple[int, int]:
    """(fewest, most) epochs an unfinished run has left, with a validation every epoch.

    RecBole stops once ``cur_step`` passes ``stopping_step``; during a warm-up ``cur_step`` is
    held at 0 until epoch ``warmup`` (1-based) starts the count."""
    most = max((p.epoch_limit or p.epochs) - p.epochs, 0)
    if p.patience is None:
        return most, most
    cur_step, stopping_step = p.patience
    fewest = max(p.warmup - 1 - p.epochs, 0) + stopping_step + 1 - max(cur_step, 0)
    return min(max(fewest, 0), most), most


def remaining(progress: list[RunProgress]) -> Remaining:
    """The :class:`Remaining` of a plan's :func:`plan_progress`."""
    min_s = max_s = not_started_s = 0.0
    not_started = unmeasured = 0
    finished: dict[tuple[str, str], list[float]] = {}
    for p in progress:
        if p.state == "finished":
            finished.setdefault((p.run.dataset, p.run.label), []).append(p.train_seconds)
    for p in progress:
        if p.state == "unfinished" and p.epochs > 0:
            per_epoch = (p.train_seconds - p.pretrain_seconds) / p.epochs
            fewest, most = _epochs_left(p)
            min_s += fewest * per_epoch
            max_s += most * per_epoch
        elif p.state == "not started" and (p.run.dataset, p.run.label) in finished:
            seconds = finished[(p.run.dataset, p.run.label)]
            not_started_s += sum(seconds) / len(seconds)
            not_started += 1
        elif p.state != "finished":
            unmeasured += 1
    return Remaining(min_s / 3600, max_s / 3600, not_started_s / 3600, not_started, unmeasured)
