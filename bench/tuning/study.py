"""The tune loop: an Optuna study over one (model, dataset), resumable, with pruning.

The driver alone asks Optuna for trials and tells it their outcome (ask/tell); trials run through
:mod:`bench.executor` (in this process, in worker processes, or as Ray tasks), and report each
validation score to the trial themselves. Everything lives in the study storage, so a study
survives its driver:

- running the same command again continues the study; ``trials`` counts every finished trial
  (complete, pruned or failed) in the study, so a resumed study runs only the remainder;
- a trial left RUNNING by a driver that died (SIGKILL, power loss) is marked FAIL with
  ``interrupted`` set, not counted, and its parameters are queued again, so none is lost or
  counted twice; Ctrl-C (or SIGTERM) does the same for the trials in flight, at once. One whose
  result the driver had recorded ok (``trial-N/result.json``) before it died is adopted as
  COMPLETE from that record instead: a finished training run is not thrown away;
- a trial whose worker (or Ray node) is lost runs again under the same number, from its last
  checkpoint where ``<out>`` is shared (:mod:`bench.executor`);
- one driver at a time per study: a lock file in the study's folder refuses a second one.

At the end the best trial's parameters go to ``<out>/tuned/<dataset>/<Model>.yaml`` and that
configuration is re-run over ``final_seeds`` into the leaderboard (``bench.api.run(tuned=True)``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import configs
from bench.configs import ConfigTree
from bench.contract import RunOptions, write_record
from bench.errors import BenchError
from bench.executor import RunOutcome, RunRequest, TrialLink, is_cluster, make_executor
from bench.io import write_json
from bench.preflight import model_spec, preflight
from bench.tuning import storage as storages
from bench.tuning.export import export_tuned
from bench.tuning.pruners import make_pruner
from bench.tuning.samplers import make_sampler
from bench.tuning.space import SearchSpace, load_space

Progress = Callable[[str], None]


@dataclass
class TuneSummary:
    """What :func:`tune` did, and where the study stands."""

    study_name: str
    storage: str
    metric: str
    direction: str
    study_dir: Path
    counts: dict[str, int] = field(default_factory=dict)  # complete, pruned, failed, interrupted
    ran: int = 0  # trials finished by this call
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    tuned_file: Path | None = None
    final: Any = None  # bench.api.RunSummary of the re-run over the final seeds


def _direction(metric: str) -> str:
    from recbole.evaluator import smaller_metrics

    return "minimize" if metric.split("@")[0].lower() in smaller_metrics else "maximize"


@contextlib.contextmanager
def _driver_lock(path: Path, study_name: str) -> Iterator[None]:
    """Hold an exclusive lock for the study's driver; the OS releases it if the driver dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole study)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BenchError(
                f"study {study_name!r} is being run by another driver ({holder}); "
                "wait for it or pass another --study"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) ends the study as cleanly as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _finished(trial: Any) -> bool:
    return trial.state.is_finished() and not trial.user_attrs.get("interrupted")


def _mark_interrupted(study: Any, trial: Any, why: str) -> None:
    import optuna

    trial.set_user_attr("interrupted", True)
    then = "its parameters are queued again" if trial.params else "a fresh trial takes its place"
    trial.set_user_attr("error", f"interrupted: {why}; {then}")
    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def _recover(study: Any, study_dir: Path, metric: str, say: Progress) -> None:
    """Settle the trials a dead driver left RUNNING: one whose result was recorded ok (the driver
    died between writing ``trial-N/result.json`` and telling Optuna) is adopted as COMPLETE; the
    others are failed with ``interrupted`` set. Then queue interrupted trials' params again."""
    import optuna

    states = optuna.trial.TrialState
    for frozen in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        handle = optuna.trial.Trial(study, frozen._trial_id)
        record = _recorded_ok(study, frozen, study_dir)
        if record is not None:
            value = _adopt(study, handle, record, study_dir / f"trial-{frozen.number}")
            say(
                f"trial {frozen.number}: left RUNNING by a stopped driver after its result was "
                f"recorded: adopted, COMPLETE {metric}={value:.4f}"
            )
            continue
        _mark_interrupted(study, handle, "the driver stopped while the trial ran")
        say(f"trial {frozen.number}: left RUNNING by a stopped driver, marked FAIL")
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for frozen in trials:
        if not frozen.user_attrs.get("interrupted") or frozen.number in retried:
            continue
        if not frozen.params:
            # Stopped inside ``ask``, before a parameter was drawn: it never ran, and the
            # trial the study asks next takes its place.
            say(f"trial {frozen.number}: interrupted before its parameters were drawn")
            continue
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
        say(f"trial {frozen.number}: interrupted, its parameters are queued again")


# A worker's clock may run behind the driver's (another machine): how much earlier than the trial
# its record may say it started and still be the trial's.
_CLOCK_SKEW_S = 300.0


def _recorded_ok(study: Any, frozen: Any, study_dir: Path) -> dict[str, Any] | None:
    """The ``trial-N/result.json`` of a RUNNING trial when it records this very trial (study,
    number, parameters, started after the trial was asked) finishing ok with a finite value."""
    try:
        record = json.loads((study_dir / f"trial-{frozen.number}" / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    trial = record.get("trial") or {}
    value = record.get("best_valid_score")
    asked = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
    if (
        record.get("status") != "ok"
        or trial.get("study") != study.study_name
        or trial.get("number") != frozen.number
        or trial.get("params") != frozen.params
        or float(trial.get("started_at") or 0) < asked - _CLOCK_SKEW_S
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        return None
    return record


def _adopt(study: Any, handle: Any, record: dict[str, Any], trial_dir: Path) -> float:
    """Finish a trial from its recorded result, as :func:`_record` would have."""
    trial = record["trial"]
    attrs = {k: trial.get(k) for k in ("host", "pid", "started_at", "finished_at", "seconds")}
    attrs["result_file"] = str(trial_dir / "result.json")
    attrs.update({k: trial[k] for k in ("ray_node_id", "attempts", "lost") if trial.get(k)})
    for key in ("valid_metric", "best_epoch", "valid", "test", "config_hash"):
        attrs[key] = record.get(key)
    for key, value in attrs.items():
        handle.set_user_attr(key, value)
    value = float(record["best_valid_score"])
    study.tell(handle, value)
    return value


def _check_study(study: Any, model: str, dataset: str, direction: str) -> None:
    attrs = study.user_attrs
    for key, value in (("model", model), ("dataset", dataset)):
        if attrs.get(key) not in (None, value):
            raise BenchError(
                f"study {study.study_name!r} is for {attrs.get(key)!r}, not {value!r} "
                f"({key}); pass another --study"
            )
    if study.direction.name.lower() != direction:
        raise BenchError(
            f"study {study.study_name!r} was created to {study.direction.name.lower()}; "
            f"this run's validation metric needs {direction}; pass another --study"
        )


def _checked_params(search: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters to enqueue: every key searched, every value one the distribution can hold
    (out of its range is allowed: Optuna warns and runs it, which is how to try an extreme)."""
    for key, value in params.items():
        dist = search.distributions.get(key)
        if dist is None:
            raise BenchError(f"enqueued parameter {key!r} is not in {search.source}")
        try:
            dist.to_internal_repr(value)
        except (ValueError, TypeError) as exc:
            raise BenchError(f"enqueued {key}={value!r}: {exc}") from exc
    return dict(params)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _record(study: Any, trial: Any, outcome: RunOutcome, trial_dir: Path, metric: str) -> str:
    """Store the outcome on the trial (user attrs; test metrics only as attrs), write the trial's
    result record and tell Optuna. Returns a one-line description."""
    import optuna

    result = outcome.result
    state, error = outcome.state, outcome.error
    if state == "ok" and outcome.value is None:  # trained to the end, but nothing to rank
        state = "failed"
        error = f"no finite validation score ({result.best_valid_score if result else None})"
    attrs: dict[str, Any] = {
        "host": outcome.host,
        "pid": outcome.pid,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "seconds": outcome.seconds,
        "result_file": str(trial_dir / "result.json"),
    }
    if outcome.ray_node_id:
        attrs["ray_node_id"] = outcome.ray_node_id
    if outcome.attempts > 1:  # its worker (or node) was lost before
        attrs["attempts"], attrs["lost"] = outcome.attempts, outcome.lost
    if state == "ok" and result is not None:
        attrs.update(
            valid_metric=result.valid_metric,
            best_epoch=result.best_epoch,
            valid=result.valid,
            test=result.test,  # recorded for the report, never used for selection
            config_hash=result.config_hash,
        )
    if error:
        attrs["error"] = error
    recorded = ("host", "pid", "ray_node_id", "attempts", "lost")
    recorded += ("started_at", "finished_at", "seconds")
    write_record(
        trial_dir / "result.json",
        result,
        status={"ok": "ok", "pruned": "pruned"}.get(state, "failed"),
        trial={
            "study": study.study_name,
            "number": trial.number,
            "params": trial.params,
            "reported": outcome.reported,
            "error": error,
            "traceback": outcome.traceback,
            **{k: attrs[k] for k in recorded if k in attrs},
        },
    )
    for key, value in attrs.items():
        trial.set_user_attr(key, value)

    states = optuna.trial.TrialState
    if state == "ok":
        study.tell(trial, outcome.value)
        text = f"COMPLETE {metric}={outcome.value:.4f}"
    elif state == "pruned":
        study.tell(trial, state=states.PRUNED)
        text = f"PRUNED ({error})"
    else:
        study.tell(trial, state=states.FAIL)
        text = f"FAIL ({error})"
    # The trial's checkpoints (a pruned run keeps its last) serve no later run.
    shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
    return (
        f"trial {trial.number}: {text} [{_format_params(trial.params)}] ({attrs['seconds']:.0f}s)"
    )


def tune(
    model: str,
    dataset: str,
    *,
    trials: int,
    workers: int | None = None,
    gpus_per_run: float | None = None,
    storage: str | os.PathLike | None = None,
    study_name: str | None = None,
    timeout: float | None = None,
    pruner: str = "median",
    sampler: str = "tpe",
    seed: int = 0,
    ray_address: str | None = None,
    final_seeds: Sequence[int] = (0, 1, 2),
    space: str | os.PathLike | None = None,
    settings: dict[str, Any] | None = None,
    epochs: int | None = None,
    config_files: Sequence[str | os.PathLike] = (),
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike = "results",
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 1,
    enqueue: Sequence[dict[str, Any]] = (),
    progress: Progress | None = None,
    command: str | None = None,
    config_tree: ConfigTree | None = None,
    gpus_per_trial: float | None = None,
) -> TuneSummary:
    """Search ``model``'s hyperparameters on ``dataset`` (objective: the validation metric).

    ``trials`` is the total of finished trials the study should hold. Trials run through
    :mod:`bench.executor`: in this process by default, ``workers`` at a time in worker processes,
    or as Ray tasks with ``ray_address`` (a cluster's ``HEAD:PORT``, or ``local``), each with
    ``gpus_per_run`` of a GPU (default: 1 where the cluster has GPUs, else 0; ``gpus_per_trial``
    is its old name). ``space`` overrides ``configs/search/<Model>.yaml``;
    ``settings`` / ``epochs`` / ``config_files`` apply to every trial and to the final runs, as in
    ``bench run``. ``enqueue`` lists parameter sets to try first (skipped if already tried).
    The best parameters go to ``<out>/tuned/<dataset>/<Model>.yaml``; ``final_seeds=()`` skips
    their re-run. ``config_tree``: the configuration to read (default: the repository's). Bad
    input raises :class:`BenchError` before anything runs.
    """
    import optuna

    say = progress or (lambda _line: None)
    if trials < 1:
        raise BenchError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise BenchError(f"--timeout must be positive, got {timeout}")
    if workers is not None and workers < 1:
        raise BenchError(f"--workers must be at least 1, got {workers}")
    gpus_per_run = _gpus_alias(gpus_per_run, gpus_per_trial)
    out = Path(out).resolve()
    tree = config_tree or ConfigTree.default()
    model = model_spec(model).name
    search = load_space(model, space, tree)
    if not search.distributions:
        raise BenchError(f"{search.source} is empty: {model} has no hyperparameter to tune")
    cache_dir = out / "cache" / "datasets"
    # Check model, dataset, data, configs and settings once here, before any trial starts. With a
    # cluster the driver may have no GPU, so the device is checked by the workers.
    checked = preflight(
        [model],
        dataset,
        seeds=[seed],
        settings=settings,
        epochs=epochs,
        config_files=config_files,
        device="cpu" if is_cluster(ray_address) else device,
        data_dir=data_dir,
        cache_dir=cache_dir,
        searched=list(search.distributions),
        searched_by=f"searched ({search.source})",
        config_tree=tree,
    )
    base, overrides = checked.runs[0], checked.overrides
    config_paths = [str(p) for p in checked.config_files]
    metric = str(base.config_dict.get("valid_metric", "MRR@10")).lower()
    direction = _direction(metric)
    spec = storages.resolve(storage, out, ray_address)
    name = study_name or f"{model}-{dataset}"
    study_dir = out / "studies" / _safe_name(name)
    pruner_obj = make_pruner(
        pruner,
        epochs=int(base.config_dict.get("epochs", 1)),
        startup_trials=pruner_startup_trials,
        warmup_epochs=pruner_warmup_epochs,
    )
    # TPE's constant liar keeps trials that run at once apart; how many a cluster runs at once
    # is known only once connected, so a Ray address counts as several.
    at_once = max(workers or 1, 2 if ray_address else 1)
    sampler_obj = make_sampler(sampler, search, seed, at_once)

    summary = TuneSummary(name, storages.describe(spec), metric, direction, study_dir)
    with _driver_lock(study_dir / "driver.lock", name):
        storages.repair_journal(spec)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # this loop reports each trial itself
        try:
            study = optuna.create_study(
                storage=storages.open_storage(spec),
                study_name=name,
                direction=direction,
                sampler=sampler_obj,
                pruner=pruner_obj,
                load_if_exists=True,
            )
            _check_study(study, model, dataset, direction)
            existing = len(study.get_trials(deepcopy=False))
            if existing:
                # A resumed study must not replay the first session's random draws.
                study.sampler = make_sampler(sampler, search, seed + existing, at_once)
                say(f"study {name!r}: resuming ({existing} trial(s) in {summary.storage})")
            for key, value in {
                "model": model,
                "dataset": dataset,
                "metric": metric,
                "space": search.describe(),
                "settings": {k: v for k, v in overrides.items()},
            }.items():
                study.set_user_attr(key, value)
            for params in enqueue:
                study.enqueue_trial(_checked_params(search, params), skip_if_exists=True)
            _recover(study, study_dir, metric, say)
            summary.ran = _run_trials(
                study,
                search=search,
                trials=trials,
                workers=workers,
                gpus_per_run=gpus_per_run,
                ray_address=ray_address,
                timeout=timeout,
                template=base.options,
                device=device,
                command=command,
                spec=spec,
                study_dir=study_dir,
                metric=metric,
                say=say,
            )
        finally:
            optuna.logging.set_verbosity(verbosity)

        _summarize(study, summary)
        if summary.best_trial is None:
            say("no trial completed: nothing exported")
            return summary
        best = study.best_trial
        summary.tuned_file = export_tuned(
            configs.tuned_folder(out),
            dataset,
            model,
            search.settings(best.params),
            study=name,
            trial=best.number,
            metric=metric,
            score=best.value,
            storage=summary.storage,
            space=search.source,
            settings=overrides,
        )
        say(f"best: trial {best.number}, {metric}={best.value:.4f}; wrote {summary.tuned_file}")
        if final_seeds:
            summary.final = _final_runs(
                model,
                dataset,
                final_seeds,
                overrides,
                config_paths,
                device,
                data_dir,
                out,
                command,
                tree,
            )
            for result in summary.final.results:
                if result.ok:
                    value = result.test.get(metric, float("nan"))
                    say(f"final seed {result.seed}: test {metric}={value:.4f}")
                else:
                    failure = result.error.type if result.error else "?"
                    say(f"final seed {result.seed}: FAILED {failure}")
    return summary


def _run_trials(
    study: Any,
    *,
    search: SearchSpace,
    trials: int,
    workers: int | None,
    gpus_per_run: float | None,
    ray_address: str | None,
    timeout: float | None,
    template: RunOptions,
    device: str,
    command: str | None,
    spec: str,
    study_dir: Path,
    metric: str,
    say: Progress,
) -> int:
    """Ask, run and tell until the study holds ``trials`` finished trials. ``template``: the
    options every trial shares (the study's settings, files, data, config tree), each trial
    adding its parameters. Returns how many trials this call finished."""
    import optuna

    done = sum(_finished(t) for t in study.get_trials(deepcopy=False))
    if done >= trials:
        say(f"study {study.study_name!r} already holds {done} finished trial(s); none to run")
        return 0
    grid = isinstance(study.sampler, optuna.samplers.GridSampler)
    started = time.monotonic()
    executor = None
    run_device = device
    pending: dict[int, Any] = {}
    ran = 0

    def more() -> bool:
        if done + len(pending) >= trials:
            return False
        if timeout is not None and time.monotonic() - started >= timeout:
            return False
        if grid:
            waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
            if not waiting and study.sampler.is_exhausted(study):
                return False
        return executor is None or len(pending) < executor.capacity

    with _sigterm_as_interrupt():
        try:
            while True:
                while more():
                    if executor is None:
                        executor = make_executor(workers, gpus_per_run, ray_address)
                        executor.on_requeue = lambda request, why: say(
                            f"trial {request.key}: worker lost ({why}); attempt {request.attempt}"
                        )
                        run_device = executor.device_for(device)
                    trial = study.ask(search.distributions)
                    trial_dir = study_dir / f"trial-{trial.number}"
                    run_settings = {**template.settings, **search.settings(trial.params)}
                    write_json(
                        trial_dir / "params.json",
                        {"number": trial.number, "params": trial.params, "settings": run_settings},
                    )
                    local = executor.in_process
                    link = TrialLink(spec, study.study_name, trial._trial_id, study.pruner)
                    request = RunRequest(
                        key=trial.number,
                        options=replace(
                            template,
                            settings=run_settings,
                            device=run_device,
                            # A retry after a lost worker continues from here, where shared.
                            checkpoint_root=trial_dir / "checkpoints",
                        ),
                        command=command,
                        link=None if local else link,
                    )
                    executor.submit(request, trial=trial if local else None)
                    pending[trial.number] = trial
                if not pending:
                    break
                for request, outcome in executor.wait(timeout=1.0):
                    trial = pending.pop(request.key)
                    trial_dir = study_dir / f"trial-{trial.number}"
                    say(_record(study, trial, outcome, trial_dir, metric))
                    done += 1
                    ran += 1
        except KeyboardInterrupt:
            if executor is not None:
                executor.cancel()
            for trial in pending.values():
                _mark_interrupted(study, trial, "stopped by Ctrl-C")
            say(f"interrupted: {len(pending)} running trial(s) marked FAIL and queued again")
            raise
        finally:
            if executor is not None:
                executor.close()
    if timeout is not None and done < trials:
        say(f"--timeout {timeout:g}s reached after {ran} trial(s); run again to continue")
    return ran


def _gpus_alias(gpus_per_run: float | None, gpus_per_trial: float | None) -> float | None:
    """``gpus_per_trial``, the old name, stands for ``gpus_per_run``; not both, differently."""
    if gpus_per_trial is None:
        return gpus_per_run
    if gpus_per_run is not None and gpus_per_run != gpus_per_trial:
        raise BenchError("--gpus-per-run and --gpus-per-trial (its old name) disagree")
    return gpus_per_trial


def _summarize(study: Any, summary: TuneSummary) -> None:
    import optuna

    states = optuna.trial.TrialState
    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "waiting": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("interrupted"):
            counts["interrupted"] += 1
        elif trial.state == states.COMPLETE:
            counts["complete"] += 1
        elif trial.state == states.PRUNED:
            counts["pruned"] += 1
        elif trial.state == states.FAIL:
            counts["failed"] += 1
        elif trial.state == states.WAITING:
            counts["waiting"] += 1
    summary.counts = counts
    if counts["complete"]:
        best = study.best_trial
        summary.best_trial, summary.best_value = best.number, best.value
        summary.best_params = dict(best.params)


def _final_runs(
    model: str,
    dataset: str,
    seeds: Sequence[int],
    overrides: dict[str, Any],
    config_files: list[str],
    device: str,
    data_dir: str | os.PathLike | None,
    out: Path,
    command: str | None,
    tree: ConfigTree,
) -> Any:
    """The best configuration on the test set over ``seeds``, into ``<out>``'s leaderboard."""
    from bench import api

    return api.run(
        [model],
        dataset,
        seeds=[int(s) for s in seeds],
        tuned=True,
        settings=overrides,
        config_files=config_files,
        device=device,
        data_dir=data_dir,
        out=out,
        command=command,
        config_tree=tree,
    )
