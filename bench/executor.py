"""One executor for every grid: ``bench run``, ``plan``, ``tune`` and ``ablate`` hand it run
requests (a typed :class:`~bench.contract.RunOptions` each) and get one outcome per request back.

Where the runs go (:func:`make_executor`):

- :class:`InlineExecutor`: ``--workers 1`` and no Ray address: one run at a time in this
  process; no pool, and Ray is never imported;
- :class:`PoolExecutor`: ``--workers N``: N worker processes on this machine (spawned on first
  use, each running one request at a time); ``--gpus-per-run F`` pins each worker to one GPU,
  ``1 / F`` workers a GPU;
- :class:`RayExecutor`: ``--ray-address HEAD:PORT`` (a cluster) or ``--ray-address local`` (a Ray
  instance of its own on this machine): Ray tasks of one CPU and ``F`` GPUs (fractions allowed).

Whichever it is, a worker runs :func:`run_request`: the pre-flight of its one run (on the machine
that trains it, so the device is checked there) and :func:`bench.runner.execute`, reporting each
validation to an Optuna trial when the request links one (``bench tune``). The outcome, with the
run's result, comes back to the driver, which alone writes results and leaderboards.

A run whose worker was lost (its process killed, its Ray node dead) is submitted again by the
driver, at most :data:`MAX_RETRIES` times, with ``RunOptions.resume`` set so that it continues from
its last checkpoint where the checkpoint folder is shared; after that it comes back failed. Every
request gets exactly one outcome, so no run ever has two results.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.contract import RunOptions, RunResult

# How many times a run whose worker or node was lost is submitted again.
MAX_RETRIES = 2
# Test-only: the name of a custom Ray resource that a run asks for instead of ``num_gpus``, so
# that GPU placement can be checked on a CPU-only cluster (nodes started with
# ``--resources '{"fake_gpu": 1}'``). Not for real clusters: the runs get no GPU.
GPU_RESOURCE_ENV = "BENCH_RAY_GPU_RESOURCE"
LOCAL = "local"  # --ray-address local: a Ray instance of this driver's own


def is_cluster(ray_address: str | None) -> bool:
    """Whether ``ray_address`` names a cluster whose nodes may be other machines."""
    return bool(ray_address) and ray_address != LOCAL


@dataclass
class TrialLink:
    """How a worker reaches its Optuna trial to report validation scores."""

    storage: str  # bench.tuning.storage spec: a database URL or a journal file path
    study_name: str
    trial_id: int
    pruner: Any  # the study's pruner (picklable), so the worker decides as the driver would


@dataclass
class RunRequest:
    """One run for a worker: its typed options and how to report."""

    key: Any  # the caller's handle: a plan's run key, a trial number, a (variant, seed) pair
    options: RunOptions
    command: str | None = None  # the command line the result records
    link: TrialLink | None = None
    # Where the run's output goes (a plan's logs/<key>.log), when the worker's machine has the
    # folder; None: wherever the worker's own output goes.
    log_file: Path | None = None
    attempt: int = 1
    lost: list[str] = field(default_factory=list)  # why the earlier attempts came back empty


@dataclass
class RunOutcome:
    """How a run ended. ``state``: ``ok`` (trained to the end), ``pruned`` or ``failed``;
    ``value`` the best validation score when finite (the last reported one when pruned);
    ``result`` the run's result (a failed one saying why, when the run raised); ``error`` one
    line on why not ok; ``fatal`` when the run refused its input (a BenchError, as the
    pre-flight would have); the (epoch, score) pairs reported; where, when, and in how many
    attempts it ran."""

    state: str = "failed"
    value: float | None = None
    result: RunResult | None = None
    error: str | None = None
    traceback: str | None = None
    fatal: bool = False
    reported: list[tuple[int, float]] = field(default_factory=list)
    host: str | None = None
    pid: int | None = None
    ray_node_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 1
    lost: list[str] = field(default_factory=list)

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


@contextlib.contextmanager
def _output_to(path: Path | None) -> Iterator[bool]:
    """Send this process's output (file descriptors 1 and 2: Python, RecBole's logger and C
    libraries alike) to ``path`` for the duration, when its folder is on this machine; yields
    whether it does."""
    if path is None or not Path(path).parent.is_dir():
        yield False
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield True
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def _absolute(options: RunOptions) -> RunOptions:
    """The options' paths made absolute, as this process resolves them (``--out results``,
    ``--data-dir ../data``): a Ray worker runs in a folder of its own."""

    def absolute(path: Any) -> Any:
        return None if path is None else Path(path).expanduser().absolute()

    return replace(
        options,
        config_files=[absolute(p) for p in options.config_files],
        tuned_from=absolute(options.tuned_from),
        data_dir=None if options.data_dir is None else str(absolute(options.data_dir)),
        cache_dir=absolute(options.cache_dir),
        checkpoint_root=absolute(options.checkpoint_root),
        config_tree=replace(options.config_tree, root=absolute(options.config_tree.root)),
    )


def _config_tree(options: RunOptions) -> RunOptions:
    """A worker on another machine reads its own checkout's config tree when the driver's
    folder is not there."""
    from bench.configs import ConfigTree

    if Path(options.config_tree.root).is_dir():
        return options
    return replace(options, config_tree=ConfigTree.default())


def run_request(
    request: RunRequest,
    trial: Any = None,
    epoch_hook: Any = None,
    *,
    ray_node_id: str | None = None,
) -> RunOutcome:
    """Run one request where this process is. ``trial``: the driver's own Optuna trial (in
    process); otherwise the request's link opens it. ``epoch_hook``: called after each training
    epoch (``bench run``'s progress bar). Never raises, except KeyboardInterrupt."""
    from bench.contract import Environment
    from bench.runner import execute, failed_result, recbole_warnings_silenced

    host = socket.gethostname()
    outcome = RunOutcome(
        host=host,
        pid=os.getpid(),
        ray_node_id=ray_node_id,
        started_at=time.time(),
        attempts=request.attempt,
        lost=list(request.lost),
    )
    options = request.options

    def on_validation(epoch: int, score: float, _result: dict[str, float]) -> None:
        outcome.reported.append((epoch, score))
        if trial is not None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise _Pruned(f"pruned after epoch {epoch} ({score:.6g})")

    result: RunResult | None = None  # a pruned trial keeps none
    with _output_to(request.log_file) as logged:
        if logged:  # a log of its own: say what runs where, and how it ended
            where = f"Ray node {ray_node_id} on {host}" if ray_node_id else host
            print(f"{request.command or request.key}\nattempt {request.attempt} on {where}, "
                  f"pid {os.getpid()}", flush=True)  # fmt: skip
            for why in request.lost:
                print(f"an earlier attempt lost its worker: {why}", flush=True)
        try:
            from bench.preflight import prepare

            options = _config_tree(options)
            if trial is None and request.link is not None:
                trial = _open_trial(request.link)
            prepared = prepare(options)
            with recbole_warnings_silenced():
                result = execute(
                    prepared,
                    epoch_callback=on_validation,
                    command=request.command,
                    train_epoch_hook=epoch_hook,
                )
            value = result.best_valid_score
            outcome.state = "ok"
            if value is not None and math.isfinite(value):
                outcome.value = float(value)
        except _Pruned as exc:
            outcome.state, outcome.error = "pruned", str(exc)
            if outcome.reported:
                outcome.value = outcome.reported[-1][1]
        except BenchError as exc:  # the input, not the model: the pre-flight's kind of error
            outcome.error, outcome.fatal = str(exc), True
            result = failed_result(options, exc, request.command)
        except Exception as exc:  # one run's failure (incl. a NaN loss) must not stop the others
            outcome.error, outcome.traceback = _first_line(exc), traceback.format_exc()
            result = failed_result(options, exc, request.command)
        if logged:
            print(_ending(outcome, result), flush=True)
    if result is not None and ray_node_id:
        if result.environment is None:
            result.environment = Environment()
        result.environment.host, result.environment.ray_node_id = host, ray_node_id
    outcome.result = result
    outcome.finished_at = time.time()
    return outcome


def _ending(outcome: RunOutcome, result: RunResult | None) -> str:
    """A log's last line(s): how the run ended."""
    seconds = time.time() - (outcome.started_at or time.time())
    if outcome.state == "ok" and result is not None:
        metric = result.valid_metric or ""
        test = result.test.get(metric)
        shown = f"test {metric}={test:.4f}, " if test is not None else ""
        return f"ok: {shown}stopped by {result.stop_reason}, {seconds:.0f} s"
    text = f"{outcome.state}: {outcome.error}"
    if result is not None and result.error is not None and result.error.traceback:
        text += "\n" + result.error.traceback
    return text


def failed_outcome(
    request: RunRequest, kind: str, message: str, lost: list[str] | None = None
) -> RunOutcome:
    """The outcome of a run that came back without one of its own: ``kind`` ``WorkerLost``
    (every attempt lost its worker) or the error Ray raised."""
    from bench.contract import RunError
    from bench.runner import failed_result

    now = time.time()
    result = failed_result(request.options, RunError(type=kind, message=message), request.command)
    return RunOutcome(
        error=f"{kind}: {message.splitlines()[0] if message else ''}",
        result=result,
        started_at=now,
        finished_at=now,
        attempts=request.attempt,
        lost=list(lost if lost is not None else request.lost),
    )


@dataclass
class _Lost:
    """What a worker left instead of an outcome."""

    why: str


class Executor:
    """Runs requests somewhere; :meth:`wait` hands back finished ones, each exactly once.

    ``capacity``: how many runs it holds at a time (a caller submits while ``pending()`` is
    below it). ``in_process``: runs happen in this process (a driver's trial object and epoch
    hooks reach them). ``gpus_per_run``: the GPU share of each run (None: not placed).
    ``on_requeue(request, why)`` is told each time a lost run is submitted again.
    """

    in_process = False
    gpus_per_run: float | None = None

    def __init__(self) -> None:
        self.on_requeue: Callable[[RunRequest, str], None] | None = None
        self._pending: dict[int, RunRequest] = {}

    @property
    def capacity(self) -> int:
        raise NotImplementedError

    def pending(self) -> int:
        return len(self._pending)

    def submit(self, request: RunRequest, *, trial: Any = None, epoch_hook: Any = None) -> None:
        """Start ``request`` (in-process executors: queue it for :meth:`wait`). ``trial`` and
        ``epoch_hook`` reach in-process runs only; other workers report through the link."""
        if not self.in_process:  # a worker may start elsewhere than this process's folder
            request.options = _absolute(request.options)
            if request.log_file is not None:
                request.log_file = Path(request.log_file).absolute()
        self._pending[id(request)] = request
        self._start(request, trial, epoch_hook)

    def wait(self, timeout: float | None = None) -> list[tuple[RunRequest, RunOutcome]]:
        """Finished runs (at least one, unless ``timeout`` seconds passed first). A lost run is
        submitted again, with ``resume``, up to :data:`MAX_RETRIES` times."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            finished = []
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            for request, outcome in self._collect(left):
                self._pending.pop(id(request), None)
                if not isinstance(outcome, _Lost):
                    finished.append((request, outcome))
                elif request.attempt > MAX_RETRIES:
                    lost = [*request.lost, outcome.why]
                    message = f"lost its worker {len(lost)} times; last: {outcome.why}"
                    finished.append((request, failed_outcome(request, "WorkerLost", message, lost)))
                else:
                    again = replace(
                        request,
                        options=replace(request.options, resume=True),
                        attempt=request.attempt + 1,
                        lost=[*request.lost, outcome.why],
                    )
                    if self.on_requeue is not None:
                        self.on_requeue(again, outcome.why)
                    self.submit(again)
            if finished or not self._pending:
                return finished
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def cancel(self) -> list[RunRequest]:
        """Stop every pending run; returns their requests."""
        cancelled = list(self._pending.values())
        self._stop_all()
        self._pending.clear()
        return cancelled

    def close(self) -> None:
        pass

    def device_for(self, device: str) -> str:
        """The device runs ask for: a worker without a GPU share trains on the CPU."""
        if self.gpus_per_run == 0:
            if device not in ("auto", "cpu"):
                raise BenchError(f"--device {device} needs --gpus-per-run > 0")
            return "cpu"
        return device

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # What each kind of executor does.
    def _start(self, request: RunRequest, trial: Any, epoch_hook: Any) -> None:
        raise NotImplementedError

    def _collect(self, timeout: float | None) -> list[tuple[RunRequest, RunOutcome | _Lost]]:
        raise NotImplementedError

    def _stop_all(self) -> None:
        raise NotImplementedError


class InlineExecutor(Executor):
    """One run at a time in this process, when :meth:`wait` is called (no pool, no Ray)."""

    in_process = True

    def __init__(self, gpus_per_run: float | None = None) -> None:
        super().__init__()
        self.gpus_per_run = gpus_per_run
        self._queue: list[tuple[RunRequest, Any, Any]] = []

    @property
    def capacity(self) -> int:
        return 1

    def _start(self, request: RunRequest, trial: Any, epoch_hook: Any) -> None:
        self._queue.append((request, trial, epoch_hook))

    def _collect(self, timeout: float | None) -> list[tuple[RunRequest, RunOutcome | _Lost]]:
        if not self._queue:
            return []
        request, trial, hook = self._queue[0]
        outcome = run_request(request, trial, hook)
        self._queue.pop(0)
        return [(request, outcome)]

    def _stop_all(self) -> None:
        self._queue.clear()


# --- a pool of worker processes on this machine -----------------------------------------------


def pool_gpus(workers: int, gpus_per_run: float | None, visible: int) -> list[int | None]:
    """The GPU (an index among the ``visible`` ones) each pool worker is pinned to, one entry a
    worker: all None without a GPU share; else ``1 / gpus_per_run`` workers a GPU, round robin,
    as many workers as the GPUs hold (``workers`` at most)."""
    if not gpus_per_run:
        return [None] * workers
    if gpus_per_run > 1:
        raise BenchError(
            f"--gpus-per-run {gpus_per_run:g}: a worker of a local pool gets one GPU at most "
            "(a Ray cluster gives a run several)"
        )
    if visible < 1:
        raise BenchError(f"--gpus-per-run {gpus_per_run:g}: no CUDA device is visible here")
    per_gpu = max(1, int(1 / gpus_per_run + 1e-9))
    return [w % visible for w in range(min(workers, visible * per_gpu))]


# How long a stopped run may take to finish its batch and save its state before it is killed.
STOP_GRACE_S = 30.0


def _exit_with(parent: int) -> None:
    """End this worker once its driver is gone (killed with SIGKILL: nobody stops us)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _pool_worker(conn: Any, gpu: str | None, parent: int) -> None:
    """A pool worker's life: run the requests the driver sends, one at a time."""
    if gpu is not None:  # before anything initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    # Ctrl-C reaches the whole process group: the driver decides what stops (and stops us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        conn.send(run_request(request))


@dataclass
class _Worker:
    gpu: str | None
    process: Any = None
    conn: Any = None
    request: RunRequest | None = None


class PoolExecutor(Executor):
    """``workers`` processes on this machine (spawned, so nothing of the driver's state leaks
    into them), each running one request at a time; a worker that dies is replaced."""

    def __init__(self, workers: int, gpus_per_run: float | None = None) -> None:
        super().__init__()
        self.gpus_per_run = gpus_per_run
        visible = 0
        if gpus_per_run:
            import torch

            visible = torch.cuda.device_count()
        names = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = names.split(",") if names else [str(i) for i in range(visible)]
        placed = pool_gpus(workers, gpus_per_run, visible)
        self._workers = [_Worker(None if g is None else ids[g]) for g in placed]
        self._context = multiprocessing.get_context("spawn")

    @property
    def capacity(self) -> int:
        return len(self._workers)

    def _spawn(self, worker: _Worker) -> None:
        parent_end, child_end = self._context.Pipe()
        worker.process = self._context.Process(
            target=_pool_worker, args=(child_end, worker.gpu, os.getpid()), daemon=True
        )
        worker.process.start()
        child_end.close()
        worker.conn = parent_end

    def _start(self, request: RunRequest, trial: Any, epoch_hook: Any) -> None:
        # Each run's default thread count: its share of the cores.
        request.options = replace(request.options, concurrent_runs=self.capacity)
        worker = next(w for w in self._workers if w.request is None)
        if worker.process is not None and not worker.process.is_alive():
            self._retire(worker)  # died while idle
        if worker.process is None:
            self._spawn(worker)
        worker.request = request
        try:
            worker.conn.send(request)
        except (BrokenPipeError, OSError):  # died since: _collect reports it lost
            pass

    def _retire(self, worker: _Worker, grace_s: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            worker.conn.close()
        if worker.process is not None:
            worker.process.join(timeout=grace_s)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        worker.process = worker.conn = None

    def _collect(self, timeout: float | None) -> list[tuple[RunRequest, RunOutcome | _Lost]]:
        busy = [w for w in self._workers if w.request is not None]
        if not busy:
            return []
        watched = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        multiprocessing.connection.wait(watched, timeout)
        finished: list[tuple[RunRequest, RunOutcome | _Lost]] = []
        for worker in busy:
            request = worker.request
            outcome: RunOutcome | _Lost | None = None
            if worker.conn.poll():
                try:
                    outcome = worker.conn.recv()
                except (EOFError, OSError):
                    pass
            if outcome is None and not worker.process.is_alive():
                code = worker.process.exitcode
                why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                outcome = _Lost(f"worker process {worker.process.pid} ended ({why})")
            if outcome is None:
                continue
            if isinstance(outcome, _Lost):
                self._retire(worker)
            worker.request = None
            finished.append((request, outcome))
        return finished

    def _stop_all(self) -> None:
        # SIGTERM lets a run finish its batch and save its state there (recbole_ext.training):
        # all are asked first, then each gets up to STOP_GRACE_S before it is killed.
        stopping = [w for w in self._workers if w.request is not None and w.process is not None]
        for worker in stopping:
            worker.process.terminate()
        for worker in stopping:
            self._retire(worker, STOP_GRACE_S)
        for worker in self._workers:
            worker.request = None

    def close(self) -> None:
        for worker in self._workers:
            if worker.process is None:
                continue
            if worker.request is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
            else:
                worker.process.terminate()
            self._retire(worker, STOP_GRACE_S)
            worker.request = None


# --- Ray ----------------------------------------------------------------------------------------


def runs_per_node(resources: dict[str, float], gpus_per_run: float, gpu_resource: str) -> int:
    """How many runs of one CPU and ``gpus_per_run`` GPUs a node with ``resources`` holds."""
    slots = int(resources.get("CPU", 0) + 1e-9)
    if gpus_per_run > 0:
        slots = min(slots, int(resources.get(gpu_resource, 0) / gpus_per_run + 1e-9))
    return slots


def _ray_run(request: RunRequest, gpus_per_run: float, gpu_resource: str) -> RunOutcome:
    """A Ray task: one request, its default thread count its share of its node's cores."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    resources = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
    slots = max(1, runs_per_node(resources, gpus_per_run, gpu_resource))
    request = replace(request, options=replace(request.options, concurrent_runs=slots))
    return run_request(request, ray_node_id=node_id)


class RayExecutor(Executor):
    """Runs requests as Ray tasks of one CPU and ``gpus_per_run`` GPUs (default: 1 where the
    cluster has GPUs, else 0), at most ``workers`` at a time (default: as many as the cluster's
    live nodes hold). ``address`` ``local`` starts a Ray instance of ``workers`` CPUs (default:
    this machine's cores) and stops it on :meth:`close`; any other attaches to that cluster."""

    def __init__(self, workers: int | None, gpus_per_run: float | None, address: str) -> None:
        super().__init__()
        if address == LOCAL:
            # Ray's `uv run` hook would ship the working tree to every worker and re-resolve the
            # environment; on one machine the workers can use this virtual environment as it is.
            os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray

        self._ray = ray
        self._started = False
        # ray.init installs its own SIGTERM handler in this process and shutdown leaves it:
        # close() puts the handlers back (a plan's own Ctrl-C/SIGTERM handling relies on them).
        self._signal_handlers = {
            sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            try:
                if address == LOCAL:
                    from bench.runner import usable_cores

                    # "local": a fresh instance of our own, never one found running on this host.
                    ray.init(address=LOCAL, num_cpus=workers or usable_cores(), **options)
                else:
                    ray.init(address=address, **options)
            except Exception as exc:  # ConnectionError, ValueError, an authentication error
                hint = ""
                if address != LOCAL and "RAY_AUTH_MODE" not in os.environ:
                    # Ray says only that it cannot connect (its log says why).
                    hint = "; a cluster with token authentication needs RAY_AUTH_MODE=token and "
                    hint += "its token (RAY_AUTH_TOKEN) in this driver's environment"
                raise BenchError(f"cannot start or reach Ray ({address}): {exc}{hint}") from exc
            self._started = True
        self.gpu_resource = os.environ.get(GPU_RESOURCE_ENV) or "GPU"
        self._workers = workers
        available = float(ray.cluster_resources().get(self.gpu_resource, 0))
        if gpus_per_run is None:
            gpus_per_run = 1.0 if available > 0 else 0.0
        self.gpus_per_run = gpus_per_run
        try:
            if gpus_per_run < 0:
                raise BenchError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
            if gpus_per_run > 0 and available == 0:
                raise BenchError(
                    f"--gpus-per-run {gpus_per_run:g}: the Ray cluster has no GPU "
                    "(use --gpus-per-run 0 on a CPU-only cluster)"
                )
            if self._cluster_slots() == 0:
                raise BenchError(
                    f"no node of the Ray cluster holds a run of 1 CPU and {gpus_per_run:g} "
                    f"GPU(s); its resources: {ray.cluster_resources()}"
                )
        except BenchError:
            self.close()
            raise
        task: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}  # the driver re-queues itself
        if self.gpu_resource == "GPU":
            task["num_gpus"] = gpus_per_run
        elif gpus_per_run > 0:
            task["resources"] = {self.gpu_resource: gpus_per_run}
        self._remote = ray.remote(**task)(_ray_run)
        self._refs: dict[Any, RunRequest] = {}
        self._slots_seen = (0.0, 0)

    def _cluster_slots(self) -> int:
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        gpus = self.gpus_per_run or 0.0
        return sum(runs_per_node(n["Resources"], gpus, self.gpu_resource) for n in nodes)

    @property
    def capacity(self) -> int:
        # The cluster's nodes come and go: counted again every few seconds.
        checked, slots = self._slots_seen
        if time.monotonic() - checked > 5:
            slots = self._cluster_slots()
            self._slots_seen = (time.monotonic(), slots)
        held = max(1, slots)
        return min(self._workers, held) if self._workers else held

    def _start(self, request: RunRequest, trial: Any, epoch_hook: Any) -> None:
        ref = self._remote.remote(request, self.gpus_per_run, self.gpu_resource)
        self._refs[ref] = request

    def _collect(self, timeout: float | None) -> list[tuple[RunRequest, RunOutcome | _Lost]]:
        if not self._refs:
            return []
        ray = self._ray
        done, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        finished: list[tuple[RunRequest, RunOutcome | _Lost]] = []
        for ref in done:
            request = self._refs.pop(ref)
            try:
                outcome: RunOutcome | _Lost = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised outside run_request's guard
                outcome = failed_outcome(request, type(exc).__name__, str(exc))
            except ray.exceptions.RayError as exc:  # its node died, its worker was killed
                outcome = _Lost(_first_line(exc))
            finished.append((request, outcome))
        return finished

    def _stop_all(self) -> None:
        for ref in self._refs:
            self._ray.cancel(ref, force=True)
        self._refs.clear()

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
            for sig, handler in self._signal_handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)


def make_executor(
    workers: int | None = None,
    gpus_per_run: float | None = None,
    ray_address: str | None = None,
) -> Executor:
    """In this process for one worker and no Ray address (Ray is not imported); a pool of
    ``workers`` processes without an address; Ray tasks with one."""
    if workers is not None and workers < 1:
        raise BenchError(f"--workers must be at least 1, got {workers}")
    if gpus_per_run is not None and gpus_per_run < 0:
        raise BenchError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
    if ray_address:
        return RayExecutor(workers, gpus_per_run, ray_address)
    if (workers or 1) == 1:
        return InlineExecutor(gpus_per_run)
    return PoolExecutor(workers or 1, gpus_per_run)
