"""One run: a prepared run (:mod:`bench.preflight`) -> a :class:`~bench.contract.RunResult`.
The RecBole dataset, model and trainer are built through ``recbole_ext``; the harness's settings
go to them typed, and RecBole's ``Config`` holds RecBole's keys (and ``train_regime``, which
models read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.allocator import keep_freed_memory
from bench.checkpoint_parts import join_all
from bench.contract import (
    DataInfo,
    Environment,
    Memory,
    PhaseMemory,
    RunError,
    RunOptions,
    RunResult,
    Timing,
    config_hash,
    infer_stop_reason,
)
from bench.datasets import fingerprint
from bench.environment import code_version, environment
from bench.errors import BenchError
from bench.memory import PeakMemory
from bench.preflight import PreparedRun
from recbole_ext.data import HarnessSettings, PreparedData, fold_in, load_dataset, prepare_data
from recbole_ext.layers.dropout import use_rand_dropout
from recbole_ext.training import (
    BudgetExhausted,
    EpochCallback,
    RecordedStop,
    TrainEpochHook,
    needs_pretraining,
    pretrain,
    recording_trainer,
)


@dataclass(frozen=True)
class Replay:
    """Where a recorded run's time budget ended each training stage (None: the stage ended by
    its own rule): a reproduction stops there instead of on the clock."""

    pretrain: RecordedStop | None = None
    fit: RecordedStop | None = None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(concurrent_runs: int) -> int:
    """PyTorch CPU threads of a run that shares the machine with ``concurrent_runs - 1`` others:
    its share of the cores (one thread per core oversubscribes a shared CPU)."""
    return max(1, usable_cores() // max(1, concurrent_runs))


# Limits on how long a run trains, not on what each epoch computes: a run asked for more epochs
# (or a larger budget) continues from the checkpoint of the same run asked for fewer. (Not
# pretrain_epochs: a finished pre-training stage is reused as it is.)
_TRAINING_LIMITS = ("epochs",)


def run_key(prepared: PreparedRun) -> str:
    """What names a run's checkpoint folder: the hash of the settings it was asked to compute
    with (placement keys, the seed, the time budget and the epoch limits left out), so that it
    is the same in every sitting."""
    config = {k: v for k, v in prepared.config_dict.items() if k not in _TRAINING_LIMITS}
    return config_hash(config)


def checkpoint_folder(prepared: PreparedRun) -> Path | None:
    options = prepared.options
    if options.checkpoint_root is None:
        return None
    return (
        Path(options.checkpoint_root)
        / options.dataset
        / options.label
        / f"seed-{options.seed}-{run_key(prepared)}"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return value.name
    return str(value)


def _eval_users(loader: Any) -> int:
    dataset = loader._dataset
    return len(set(dataset.inter_feat[dataset.uid_field].tolist()))


def _metrics(result: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in (result or {}).items()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _harness_record(prepared: PreparedRun, settings: HarnessSettings) -> dict[str, Any]:
    """The harness keys as the result's config records them: as asked (so that an unchanged
    configuration keeps its config hash), with the thread count the run used."""
    asked = prepared.config_dict
    record = {k: asked[k] for k in HarnessSettings.keys() if k in asked}
    record["threads"] = settings.threads
    return record


def build_model(
    cls: type, config: Any, prepared_data: PreparedData, settings: HarnessSettings
) -> Any:
    """A run's model as every run builds it (the benchmarks too): ``cls`` on the whole
    training split, on ``config``'s device, its dropout drawn from ``torch.rand`` under
    ``fast_dropout``, and the held-out users' history folded in under strong generalization."""
    model = cls(config, prepared_data.model_dataset).to(config["device"])
    if settings.fast_dropout:
        use_rand_dropout(model)
    if prepared_data.fold_in is not None:
        fold_in(model, prepared_data.fold_in)
    return model


def execute(
    prepared: PreparedRun,
    epoch_callback: EpochCallback | None = None,
    command: str | None = None,
    train_epoch_hook: TrainEpochHook | None = None,
    *,
    replay: Replay | None = None,
) -> RunResult:
    """Train and evaluate one prepared run. Returns a result with status ``ok``. ``replay``
    (``bench reproduce``): stop each training stage where a recorded run's budget stopped it.

    Exceptions from RecBole or the model propagate; :func:`bench.executor.run_request` records
    them as a failed result (:func:`failed_result`).
    """
    import torch
    from recbole.config import Config
    from recbole.utils import init_seed

    from recbole_ext import compat

    compat.apply()  # a worker process may reach here without the CLI or the pre-flight
    options = prepared.options
    started = _now()
    kept_folder = checkpoint_folder(prepared)
    if kept_folder is None:
        checkpoint_dir = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    else:
        checkpoint_dir = kept_folder
        if not options.resume:  # a fresh run never continues from an old one's state
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        elif checkpoint_dir.is_dir():  # committed in parts for a git host
            join_all(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stop_reason = None
    # PyTorch's default pool (a thread per core) oversubscribes a CPU that other runs share.
    threads = prepared.settings.threads or default_threads(options.concurrent_runs)
    settings = dataclasses.replace(prepared.settings, threads=threads)
    try:
        t0 = time.perf_counter()
        config_dict = dict(prepared.recbole_config)
        config_dict.update(data_path=str(prepared.data_path), checkpoint_dir=str(checkpoint_dir))
        config = Config(
            model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
        )
        torch.set_num_threads(threads)
        malloc = keep_freed_memory()  # before the run's tensors: pages reused step to step
        init_seed(config["seed"], config["reproducibility"])
        try:
            dataset, cached = load_dataset(config, options.cache_dir)
        except (ValueError, KeyError, IndexError) as exc:
            folder = prepared.data_path / prepared.data_name
            raise BenchError(f"malformed data in {folder}: {type(exc).__name__}: {exc}") from exc
        prepared_data = prepare_data(config, dataset, settings)
        train_data, valid_data, test_data = prepared_data
        data_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        train_memory = PeakMemory(config["device"]).start()
        pretrain_records: list = []
        pretrain_earlier_seconds = 0.0  # a resumed run's pre-training in earlier sittings
        # What the run was asked for, kept over what the fine-tuning stage is configured with:
        # --resume compares a result's config with the next ask.
        budget = settings.time_budget_s
        asked: dict[str, Any] = {"time_budget_s": budget}
        if needs_pretraining(config):
            asked["train_stage"] = config["train_stage"]
            stage = pretrain(
                config,
                prepared.spec.cls,
                train_data,
                prepared_data.model_dataset,
                budget / 2,
                checkpoint_dir,
                resume=options.resume,
                settings=settings,
                replay_stop=replay.pretrain if replay else None,
            )
            pretrain_records = stage.records
            pretrain_earlier_seconds = stage.earlier_seconds
            config_dict.update(train_stage="finetune", pre_model_path=str(stage.path))
            if budget:  # fine-tuning gets what pre-training left of the run's budget
                spent = time.perf_counter() - t1 + pretrain_earlier_seconds
                settings = dataclasses.replace(settings, time_budget_s=max(budget - spent, 1e-6))
            config = Config(
                model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
            )
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = build_model(prepared.spec.cls, config, prepared_data, settings)
        trainer = recording_trainer(config, model, epoch_callback, train_epoch_hook, settings)
        trainer.replay_stop = replay.fit if replay else None
        trainer.saved_model_file = str(checkpoint_dir / "best.pth")
        trainer.last_checkpoint = checkpoint_dir / "last.pth"
        trainer.best_weights_only = True  # a run resumes from last.pth, never from best.pth
        resumed_from = None
        if options.resume and trainer.last_checkpoint.is_file():
            resumed_from = trainer.resume(trainer.last_checkpoint, train_data)
        stopped_by_budget = False
        try:
            best_valid_score, best_valid_result = trainer.fit(
                train_data, valid_data, saved=True, show_progress=bool(config["show_progress"])
            )
        except BudgetExhausted:
            stopped_by_budget = True
            best_valid_score, best_valid_result = (
                trainer.best_valid_score,
                trainer.best_valid_result,
            )
        stopped_by_budget = stopped_by_budget or trainer.cut_by_budget
        if stopped_by_budget:
            stop_reason = "time_budget"
        elif trainer.stop_reason is not None:
            stop_reason = trainer.stop_reason
        else:  # a trainer with a fit loop of its own says nothing: inferred as for old records
            epoch_limit = getattr(trainer, "epochs", config["epochs"])
            stop_reason = infer_stop_reason("ok", False, len(trainer.epochs_record), epoch_limit)
        train_seconds = time.perf_counter() - t1
        train_peak = train_memory.stop()  # validations included
        has_checkpoint = Path(trainer.saved_model_file).exists()
        t2 = time.perf_counter()
        test_memory = PeakMemory(config["device"]).start()
        test_result = trainer.evaluate(test_data, load_best_model=has_checkpoint)
        test_peak = test_memory.stop()
        eval_seconds = time.perf_counter() - t2
        per_user = dict(trainer.last_per_user)
        if per_user:
            per_user["user_id"] = dataset.id2token(dataset.uid_field, per_user["user_id"])
    finally:
        # A run cut by its budget (or killed: no stop reason) keeps its checkpoints to continue
        # from; a run that ended by its own stopping rule needs them no more.
        if kept_folder is None or stop_reason in ("early_stopping", "epoch_limit"):
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    records = trainer.epochs_record
    validated = [r for r in records if r.valid_score is not None]
    best_epoch = None
    if validated:
        best = max if config["valid_metric_bigger"] else min
        best_value = best(r.valid_score for r in validated)
        best_epoch = [r.epoch for r in validated if r.valid_score == best_value][-1]
    resolved = {
        **_jsonable(dict(config.final_config_dict)),
        **_harness_record(prepared, settings),
        **asked,
    }
    data_folder = prepared.data_path / prepared.data_name
    return RunResult(
        status="ok",
        dataset=options.dataset,
        model=options.label,
        model_class=prepared.spec.name,
        family=prepared.spec.family,
        source=prepared.spec.source,
        seed=options.seed,
        quick=options.quick,
        config_hash=config_hash(resolved),
        valid_metric=str(config["valid_metric"]).lower(),
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        code_version=code_version(),
        best_valid_score=None if best_valid_score is None else float(best_valid_score),
        valid=_metrics(best_valid_result),
        test=_metrics(test_result),
        epochs=list(records),
        pretrain_epochs=list(pretrain_records),
        timing=Timing(
            data_seconds=data_seconds,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            total_seconds=data_seconds + train_seconds + eval_seconds,
            resumed_from_epoch=resumed_from,
            # Fine-tuning's clock counts its own earlier sittings only.
            earlier_train_seconds=trainer.elapsed_before + pretrain_earlier_seconds,
            resumed_from_batch=trainer.resumed_from_batch,
        ),
        memory=Memory(train=PhaseMemory(**train_peak), test=PhaseMemory(**test_peak)),
        data=DataInfo(
            path=str(data_folder),
            sha256=fingerprint(data_folder),
            source=prepared.data_source,
            cached=cached,
            users=int(dataset.user_num - 1),  # RecBole counts the padding id
            items=int(dataset.item_num - 1),
            interactions=int(dataset.inter_num),
            train_samples=len(train_data._dataset),
            valid_users=_eval_users(valid_data),
            test_users=_eval_users(test_data),
        ),
        config=resolved,
        environment=Environment(**environment(config["device"]), malloc=malloc),
        command=command,
        started_at=started,
        finished_at=_now(),
        per_user=per_user or None,
    )


def failed_result(
    options: RunOptions, error: BaseException | RunError, command: str | None
) -> RunResult:
    """The record of a run that ended in ``error``: an exception raised here (with its
    traceback) or a :class:`RunError` from elsewhere (a lost worker, Ray)."""
    if isinstance(error, BaseException):
        error = RunError(
            type=type(error).__name__, message=str(error), traceback=traceback.format_exc()
        )
    return RunResult(
        status="failed",
        dataset=options.dataset,
        model=options.label,
        model_class=options.model,
        seed=options.seed,
        quick=options.quick,
        stop_reason="failed",
        error=error,
        command=command,
        finished_at=_now(),
    )


@contextlib.contextmanager
def recbole_warnings_silenced() -> Iterator[None]:
    """RecBole 1.2.1 on current PyTorch warns on every run about APIs it uses; not actionable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="recbole")
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield
