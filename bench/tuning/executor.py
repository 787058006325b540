"""Running jobs (one training run each: a tuning trial or an ablation variant x seed).

:func:`run_job` is the whole of a job: the pre-flight (:mod:`bench.preflight`) and
``bench.runner.execute`` with the job's settings, every validation reported to the Optuna trial
(when there is one) so that the pruner can stop it. It runs either in this process
(:class:`LocalExecutor`: one job at a time, Ray never imported) or as a Ray task with
``num_cpus=1`` and a GPU fraction (:class:`RayExecutor`). A Ray task opens the study storage
itself and reports through ``optuna.trial.Trial(study, trial_id)``, so pruning works across
processes; the driver alone asks for and tells trials.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.contract import RunResult


@dataclass
class TrialLink:
    """How a worker reaches its Optuna trial to report validation scores."""

    storage: str  # bench.tuning.storage spec: a database URL or a journal file path
    study_name: str
    trial_id: int
    pruner: Any  # the study's pruner (picklable), so the worker decides as the driver would


@dataclass
class Job:
    """One run: what ``bench run`` would do for one (dataset, model, seed) and these settings."""

    key: Any  # the caller's handle: a trial number, a (variant, seed) pair
    dataset: str
    model: str
    seed: int
    settings: dict[str, Any]
    device: str = "auto"
    config_files: list[str] = field(default_factory=list)
    data_dir: str | None = None
    cache_dir: str | None = None
    config_dir: str | None = None  # the driver's config tree, when this machine has it
    command: str | None = None
    link: TrialLink | None = None
    concurrent_runs: int = 1  # jobs sharing the machine's cores: its default thread count


@dataclass
class JobOutcome:
    """How a job ended: ``state`` ``ok``, ``pruned`` or ``failed``; ``value`` the best
    validation score (the last reported one when pruned); ``result`` the run's result when it
    trained to the end; ``error`` one line on why not; the (epoch, score) pairs reported; where
    and when it ran."""

    state: str = "failed"
    value: float | None = None
    result: RunResult | None = None
    error: str | None = None
    traceback: str | None = None
    reported: list[tuple[int, float]] = field(default_factory=list)
    host: str | None = None
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished_at or 0) - (self.started_at or 0)


class _Pruned(Exception):
    """Raised from the epoch callback when the pruner stops the trial."""


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _open_trial(link: TrialLink) -> Any:
    import optuna

    from bench.tuning.storage import open_storage

    # RandomSampler: the trial's params are already fixed by the driver; this study handle only
    # reports intermediate values and asks the pruner.
    study = optuna.load_study(
        study_name=link.study_name,
        storage=open_storage(link.storage),
        sampler=optuna.samplers.RandomSampler(),
        pruner=link.pruner,
    )
    return optuna.trial.Trial(study, link.trial_id)


def run_job(job: Job, trial: Any = None) -> JobOutcome:
    """Run one job; never raises except KeyboardInterrupt."""
    outcome = JobOutcome(host=socket.gethostname(), pid=os.getpid(), started_at=time.time())

    def on_validation(epoch: int, score: float, _result: dict[str, float]) -> None:
        outcome.reported.append((epoch, score))
        if trial is not None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise _Pruned(f"pruned after epoch {epoch} ({score:.6g})")

    try:
        from bench.configs import ConfigTree
        from bench.preflight import preflight
        from bench.runner import execute, recbole_warnings_silenced

        # A Ray worker is a fresh process: it reads the driver's config tree (tests and
        # notebooks point it elsewhere) when this machine has it.
        tree = ConfigTree.default()
        if job.config_dir and Path(job.config_dir).is_dir():
            tree = ConfigTree(Path(job.config_dir))
        if trial is None and job.link is not None:
            trial = _open_trial(job.link)
        (prepared,) = preflight(
            [job.model],
            job.dataset,
            seeds=[job.seed],
            settings=dict(job.settings),
            config_files=job.config_files,
            device=job.device,
            data_dir=job.data_dir,
            cache_dir=Path(job.cache_dir) if job.cache_dir else None,
            config_tree=tree,
            concurrent_runs=job.concurrent_runs,
        ).runs
        with recbole_warnings_silenced():
            result = execute(prepared, epoch_callback=on_validation, command=job.command)
        value = result.best_valid_score
        outcome.result = result
        if value is None or not math.isfinite(value):
            outcome.error = f"no finite validation score ({value})"
        else:
            outcome.state, outcome.value = "ok", float(value)
    except _Pruned as exc:
        outcome.state, outcome.error = "pruned", str(exc)
        if outcome.reported:
            outcome.value = outcome.reported[-1][1]
    except Exception as exc:  # a trial's failure (incl. NaN loss) must not stop the study
        outcome.error, outcome.traceback = _first_line(exc), traceback.format_exc()
    outcome.finished_at = time.time()
    return outcome


class LocalExecutor:
    """Runs jobs one at a time in this process, when :meth:`wait` is called."""

    capacity = 1

    def __init__(self) -> None:
        self._queue: list[tuple[Job, Any]] = []

    def submit(self, job: Job, trial: Any = None) -> None:
        # In-process the driver's own Trial object reports: no second storage handle needed.
        self._queue.append((job, trial))

    def pending(self) -> int:
        return len(self._queue)

    def wait(self) -> list[tuple[Job, JobOutcome]]:
        job, trial = self._queue[0]
        outcome = run_job(job, trial)
        self._queue.pop(0)
        return [(job, outcome)]

    def cancel(self) -> list[Job]:
        jobs = [job for job, _ in self._queue]
        self._queue.clear()
        return jobs

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs up to ``workers`` jobs at a time as Ray tasks (``num_cpus=1``, ``num_gpus=gpus``).

    Without ``address`` a local Ray instance with ``workers`` CPUs is started (and stopped by
    :meth:`close`); with one, the driver attaches to that cluster.
    """

    def __init__(self, workers: int, gpus_per_trial: float | None, address: str | None) -> None:
        if address is None:
            # Ray's `uv run` hook would ship the working tree to every worker and re-resolve the
            # environment; on one machine the workers can use this virtual environment as it is.
            os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            try:
                if address is None:
                    # "local": a fresh instance of our own, never one found running on this host.
                    ray.init(address="local", num_cpus=workers, **options)
                else:
                    ray.init(address=address, **options)
            except Exception as exc:  # ConnectionError, ValueError: unreachable or bad address
                raise BenchError(
                    f"cannot start or reach Ray ({address or 'local'}): {exc}"
                ) from exc
            self._started = True
        available = float(ray.cluster_resources().get("GPU", 0))
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if available > 0 else 0.0
        if gpus_per_trial < 0:
            self.close()
            raise BenchError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
        if gpus_per_trial > 0 and available == 0:
            self.close()
            raise BenchError(
                f"--gpus-per-trial {gpus_per_trial}: the Ray cluster has no GPU "
                "(use --gpus-per-trial 0 on a CPU-only machine)"
            )
        self.gpus_per_trial = gpus_per_trial
        self.capacity = workers
        # No retries: a crashed worker is a failed trial, recorded once, not re-run behind the
        # driver's back.
        self._remote = ray.remote(num_cpus=1, num_gpus=gpus_per_trial, max_retries=0)(run_job)
        self._pending: dict[Any, Job] = {}

    def submit(self, job: Job, trial: Any = None) -> None:
        # Each task's default thread count is its share of the cores (bench.runner).
        job = replace(job, concurrent_runs=self.capacity)
        self._pending[self._remote.remote(job)] = job

    def pending(self) -> int:
        return len(self._pending)

    def wait(self) -> list[tuple[Job, JobOutcome]]:
        done, _ = self._ray.wait(list(self._pending), num_returns=1)
        finished = []
        for ref in done:
            job = self._pending.pop(ref)
            try:
                outcome = self._ray.get(ref)
            except Exception as exc:  # the worker died (OOM, segfault) or Ray failed the task
                now = time.time()
                outcome = JobOutcome(
                    error=f"worker lost: {_first_line(exc)}", started_at=now, finished_at=now
                )
            finished.append((job, outcome))
        return finished

    def cancel(self) -> list[Job]:
        jobs = list(self._pending.values())
        for ref in self._pending:
            self._ray.cancel(ref, force=True)
        self._pending.clear()
        return jobs

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(
    workers: int, gpus_per_trial: float | None = None, ray_address: str | None = None
) -> LocalExecutor | RayExecutor:
    """In-process for one worker and no cluster (Ray is not imported); Ray otherwise."""
    if workers < 1:
        raise BenchError(f"--workers must be at least 1, got {workers}")
    if workers == 1 and not ray_address:
        return LocalExecutor()
    return RayExecutor(workers, gpus_per_trial, ray_address)


def job_device(executor: LocalExecutor | RayExecutor, device: str) -> str:
    """The device a job asks for: a Ray task without a GPU share trains on the CPU."""
    if isinstance(executor, RayExecutor) and executor.gpus_per_trial == 0:
        if device not in ("auto", "cpu"):
            raise BenchError(f"--device {device} needs --gpus-per-trial > 0 with Ray workers")
        return "cpu"
    return device
