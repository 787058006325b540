"""Run plans: many runs through one executor (:mod:`bench.executor`), within a wall-clock
deadline.

A plan (``configs/plans/<name>.yaml``) lists jobs; each job is one model (or a list of models) on
one dataset, over seeds, with optional settings, a run name (a variant row) and a training budget:

    defaults: {seeds: [0], budget_s: 600}
    jobs:
      - {dataset: amazon-beauty, models: [SASRec, SLIME4Rec], seeds: [0, 1, 2]}
      - {dataset: amazon-beauty, models: [HybridContrastVAE], name: HybridContrastVAE-dirichlet,
         set: {latent: dirichlet}, seeds: [0, 1, 2]}
      - {dataset: ml-1m, models: all}   # the dataset's suite, as ``bench run --models all``
    baselines: {amazon-beauty: HybridContrastVAE}   # optional: leaderboards' --baseline

A job's keys replace the defaults' keys, except ``set``, which adds to the defaults' ``set`` (the
job's own settings win).

Every (model, seed) is one run, what ``bench run`` would do for it: in this process (``--workers
1``), in a pool of worker processes (``--workers N``) or as a Ray task on a cluster's nodes and
GPUs (``--ray-address``); runs start in the plan's order as slots free up. With a deadline, a run
that starts late gets the time that is left (its ``time_budget_s`` shrinks) and one that would get
less than ``min_budget_s`` is not started: the plan ends on time and says what it left out. Every
run goes through the pre-flight (:mod:`bench.preflight`) before the first one starts, so a plan
with a misspelt setting or missing data fails at once, not in its hundredth run. Results come back
to this process, which alone writes them and rebuilds a dataset's leaderboard after each run. The
plan's record (the equivalent ``bench run`` commands, statuses, where and when each ran, what was
skipped) is written to ``<out>/plans/<plan>.json``; each run's output to
``<out>/plans/<plan>/logs/<key>.log`` (on a cluster, where that folder is shared).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import configs, leaderboard
from bench.configs import ConfigTree
from bench.contract import RunOptions, write_result
from bench.errors import BenchError
from bench.executor import RunRequest, is_cluster, make_executor
from bench.io import write_json
from recbole_ext.training import deferred_until_saved

JOB_KEYS = frozenset({"dataset", "models", "seeds", "name", "set", "budget_s", "epochs"})
PLAN_KEYS = frozenset({"defaults", "jobs", "baselines"})


@dataclass
class PlannedRun:
    """One run of a plan: what ``bench run`` does for one model and seed."""

    dataset: str
    model: str
    seed: int
    budget_s: float
    name: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None

    @property
    def label(self) -> str:
        return self.name or self.model

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.label}__seed-{self.seed}"

    def asked(self) -> dict[str, Any]:
        """The settings its ``bench run`` asks for at its own budget (``--set``, ``--epochs``)."""
        settings = dict(self.settings)
        if self.epochs is not None:
            settings["epochs"] = self.epochs
        settings["time_budget_s"] = self.budget_s
        return settings

    def command(
        self, budget_s: float, device: str, out: Path, data_dir: Path | None, resume: bool
    ) -> list[str]:
        """The ``bench run`` command line this run stands for, with the given training budget
        (``--dry-run`` prints it; the run's result records it)."""
        cmd = [sys.executable, "-m", "bench", "run", "--models", self.model]
        cmd += ["--dataset", self.dataset, "--seeds", str(self.seed), "--device", device]
        cmd += ["--out", str(out)]
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        if self.name:
            cmd += ["--name", self.name]
        if self.epochs is not None:
            cmd += ["--epochs", str(self.epochs)]
        for key, value in self.settings.items():
            cmd += ["--set", f"{key}={_yaml_scalar(value)}"]
        if budget_s > 0:
            cmd += ["--set", f"time_budget_s={budget_s:g}"]
        if resume:
            cmd.append("--resume")
        return cmd

    def options(
        self,
        prepared: RunOptions,
        budget_s: float,
        device: str,
        out: Path,
        resume: bool,
        threads: int = 0,
    ) -> RunOptions:
        """The typed options of :meth:`command`: what the pre-flight prepared at the plan's
        budget, with the granted one, and where ``bench run --out`` keeps data and checkpoints."""
        settings = dict(self.settings)
        if self.epochs is not None:
            settings["epochs"] = self.epochs
        if budget_s > 0:
            settings["time_budget_s"] = budget_s
        if threads:
            settings["threads"] = threads
        return replace(
            prepared,
            settings=settings,
            device=device,
            cache_dir=out / "cache" / "datasets",
            checkpoint_root=out / "checkpoints",
            resume=resume,
        )


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def _read_plan(path: str | os.PathLike) -> dict[str, Any]:
    data = configs.load_yaml(path)
    unknown = sorted(set(data) - PLAN_KEYS)
    if unknown:
        raise BenchError(f"plan {path}: unknown top-level key(s) {', '.join(unknown)}")
    return data


def load_baselines(path: str | os.PathLike, tree: ConfigTree | None = None) -> dict[str, str]:
    """The plan's ``baselines:`` (dataset -> model row): its leaderboards compare with them."""
    baselines = _read_plan(path).get("baselines") or {}
    if not isinstance(baselines, dict) or not all(isinstance(v, str) for v in baselines.values()):
        raise BenchError(f"plan {path}: 'baselines' must map datasets to model names")
    datasets = {run.dataset for run in load_plan(path, tree)}
    stray = sorted(set(baselines) - datasets)
    if stray:
        raise BenchError(f"plan {path}: baselines for dataset(s) no job runs: {', '.join(stray)}")
    return {str(k): v for k, v in baselines.items()}


def load_plan(path: str | os.PathLike, tree: ConfigTree | None = None) -> list[PlannedRun]:
    """The runs of a plan file, in order (``models: all`` is the suite of ``tree``, default
    the repository's); a malformed plan raises :class:`BenchError`."""
    data = _read_plan(path)
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise BenchError(f"plan {path}: needs a non-empty 'jobs' list")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or not isinstance(defaults.get("set") or {}, dict):
        raise BenchError(f"plan {path}: 'defaults' and its 'set' must be mappings")
    runs: list[PlannedRun] = []
    for number, job in enumerate(jobs, start=1):
        if not isinstance(job, dict):
            raise BenchError(f"plan {path}: job {number} is not a mapping")
        if not isinstance(job.get("set") or {}, dict):
            raise BenchError(f"plan {path}: job {number}'s 'set' is not a mapping")
        # A job's `set:` adds to the defaults' (its own keys win), as every other key replaces.
        settings = {**(defaults.get("set") or {}), **(job.get("set") or {})}
        job = {**defaults, **job, "set": settings}
        unknown = sorted(set(job) - JOB_KEYS)
        if unknown:
            raise BenchError(f"plan {path}: job {number} has unknown key(s) {', '.join(unknown)}")
        if "dataset" not in job or not job.get("models"):
            raise BenchError(f"plan {path}: job {number} needs 'dataset' and 'models'")
        models = job["models"] if isinstance(job["models"], list) else [job["models"]]
        if models == ["all"]:  # as ``bench run --models all``: the dataset's suite
            models = (tree or ConfigTree.default()).suite(str(job["dataset"]))
        if job.get("name") and len(models) != 1:
            raise BenchError(f"plan {path}: job {number} names a variant of several models")
        seeds = job.get("seeds", [0])
        seeds = seeds if isinstance(seeds, list) else [seeds]
        for model in models:
            for seed in seeds:
                runs.append(
                    PlannedRun(
                        dataset=str(job["dataset"]),
                        model=str(model),
                        seed=int(seed),
                        budget_s=float(job.get("budget_s", 0)),
                        name=job.get("name"),
                        settings=dict(job.get("set") or {}),
                        epochs=job.get("epochs"),
                    )
                )
    keys = [r.key for r in runs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise BenchError(f"plan {path}: runs listed twice: {', '.join(duplicates)}")
    return runs


def granted_budget(wanted_s: float, elapsed_s: float, deadline_s: float, reserve_s: float) -> float:
    """The training budget a run starting now gets: its own, cut to what the deadline leaves
    once ``reserve_s`` (loading data, the last epoch, the test pass) is set aside. 0 = no cap."""
    if deadline_s <= 0:
        return wanted_s
    left = deadline_s - elapsed_s - reserve_s
    return left if wanted_s <= 0 else min(wanted_s, left)


def preflight_runs(
    runs: list[PlannedRun], device: str, data_dir: Path | None, tree: ConfigTree
) -> dict[str, Any]:
    """Every run of the plan through the pre-flight, as its process will ask (at the plan's own
    budget); the prepared runs by key."""
    from bench.preflight import preflight  # PyTorch: only when a plan really runs

    return {
        run.key: preflight(
            [run.model],
            run.dataset,
            seeds=[run.seed],
            settings=run.asked(),
            name=run.name,
            device=device,
            data_dir=data_dir,
            config_tree=tree,
        ).runs[0]
        for run in runs
    }


def is_finished(run: PlannedRun, prepared: Any, out: Path) -> bool:
    """Whether a result exists that this run would only repeat: same settings, and not cut off
    by a smaller budget than this run's (a capped CPU run does not stand in for a GPU run)."""
    from bench.contract import completed
    from bench.preflight import resume_settings

    return completed(out, run.dataset, run.label, run.seed, resume_settings(prepared))


@dataclass
class PlanRecord:
    plan: str
    started_at: str
    workers: int | None
    deadline_s: float
    ray_address: str | None = None
    gpus_per_run: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    not_started: list[dict[str, Any]] = field(default_factory=list)
    finished_at: str | None = None
    # With --resume: the records of the earlier, cut-off executions of the same plan, oldest first.
    earlier: list[dict[str, Any]] = field(default_factory=list)


@deferred_until_saved  # a run in this process saves its state first (recbole_ext.training)
def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _rebuild(out: Path, dataset: str, baselines: dict[str, str], final: bool = True) -> None:
    """The dataset's leaderboard, with the plan's baseline when it names one. Before the end
    (``final`` false) a baseline that has no successful run yet is left out for now."""
    test = leaderboard.written_test(out, dataset)
    if dataset not in baselines:
        leaderboard.refresh(out, dataset)
        return
    try:
        leaderboard.write(out, dataset, baselines[dataset], test)
    except BenchError:
        if final:
            raise
        leaderboard.write(out, dataset, test=test)


def _finished_entry(entry: dict[str, Any], outcome: Any, elapsed: float) -> dict[str, Any]:
    """A started run's record entry once its outcome is back."""
    result = outcome.result
    entry = {**entry, "status": result.status if result is not None else "failed"}
    if outcome.error and entry["status"] != "ok":
        entry["error"] = outcome.error
    if outcome.attempts > 1:  # its worker (or node) was lost before: the attempts' reasons
        entry["attempts"], entry["lost"] = outcome.attempts, outcome.lost
    entry.update(host=outcome.host, pid=outcome.pid)
    if outcome.ray_node_id:
        entry["ray_node_id"] = outcome.ray_node_id
    entry["end_s"] = round(elapsed, 1)
    return entry


def execute(
    plan_path: str | os.PathLike,
    *,
    out: str | os.PathLike = "results",
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    gpus_per_run: float | None = None,
    ray_address: str | None = None,
    deadline_s: float = 0,
    reserve_s: float = 120,
    min_budget_s: float = 60,
    threads: int = 0,
    resume: bool = False,
    dry_run: bool = False,
    echo: Any = print,
    config_tree: ConfigTree | None = None,
) -> PlanRecord:
    """Run a plan's runs through :mod:`bench.executor` (``workers`` at a time: in this process
    for one, worker processes for more, Ray tasks of ``gpus_per_run`` GPUs with ``ray_address``)
    and rebuild the leaderboards of its datasets. This process alone writes the results and
    rebuilds a dataset's leaderboard after each of its runs. ``threads``: each run's PyTorch CPU
    threads (0: its share of the cores). ``config_tree``: the configuration every run reads
    (default: the repository's)."""
    plan_path = Path(plan_path)
    tree = config_tree or ConfigTree.default()
    runs = load_plan(plan_path, tree)
    baselines = load_baselines(plan_path, tree)
    out = Path(out)
    data = Path(data_dir) if data_dir is not None else None
    if workers is not None and workers < 1:
        raise BenchError("--workers must be at least 1")
    if threads < 0:
        raise BenchError(f"--threads must be >= 0, got {threads}")
    record = PlanRecord(
        plan_path.stem,
        _now(),
        workers,
        deadline_s,
        ray_address=ray_address,
        gpus_per_run=gpus_per_run,
    )
    if dry_run:
        for run in runs:
            echo(shlex.join(run.command(run.budget_s, device, out, data, resume)))
        return record
    # With a cluster the driver may have no GPU: the workers check the device.
    prepared = preflight_runs(runs, "cpu" if is_cluster(ray_address) else device, data, tree)
    start = time.monotonic()  # the deadline's clock
    queue = list(runs)
    record_path = out / "plans" / f"{plan_path.stem}.json"
    if resume:
        if record_path.exists():
            previous = json.loads(record_path.read_text(encoding="utf-8"))
            record.earlier = [*previous.pop("earlier", []), previous]
        done = [r for r in queue if is_finished(r, prepared[r.key], out)]
        for run in done:
            echo(f"skipped {run.key}: result exists (--resume)")
        queue = [r for r in queue if r not in done]
    # Refused here (no GPU for --gpus-per-run, no cluster at the address): before any file.
    executor = make_executor(workers, gpus_per_run, ray_address)
    try:
        run_device = executor.device_for(device)
    except BenchError:
        executor.close()
        raise
    record.workers, record.gpus_per_run = executor.capacity, executor.gpus_per_run
    executor.on_requeue = lambda request, why: echo(
        f"re-queued {request.key} (attempt {request.attempt}): {why}"
    )
    logs = out / "plans" / plan_path.stem / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started: dict[str, dict[str, Any]] = {}  # run key -> its record entry, while it runs
    # `kill` (or a scheduler taking the machine back) stops a plan as Ctrl-C does: the runs it
    # started are stopped and its record is kept. Only the main thread may set a handler.
    restore_sigterm = None
    if threading.current_thread() is threading.main_thread():
        restore_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        restore_sigint = signal.getsignal(signal.SIGINT)
    try:
        while queue or executor.pending():
            while queue and executor.pending() < executor.capacity:
                run = queue.pop(0)
                elapsed = time.monotonic() - start
                budget = granted_budget(run.budget_s, elapsed, deadline_s, reserve_s)
                if deadline_s > 0 and budget < min_budget_s:
                    record.not_started.append({**asdict(run), "why": f"{budget:.0f} s left"})
                    echo(f"not started {run.key}: {budget:.0f} s left before the deadline")
                    continue
                cmd = run.command(budget, device, out, data, resume)
                request = RunRequest(
                    key=run.key,
                    options=run.options(
                        prepared[run.key].options, budget, run_device, out, resume, threads
                    ),
                    command=shlex.join(["bench", *cmd[3:]]),  # as `bench run` would record it
                    log_file=logs / f"{run.key}.log",
                )
                request.log_file.write_text("", encoding="utf-8")  # this execution's log only
                executor.submit(request)
                started[run.key] = {
                    **asdict(run),
                    "granted_budget_s": budget,
                    "command": shlex.join(cmd),
                    "start_s": round(elapsed, 1),
                }
                echo(f"started {run.key} (budget {budget:.0f} s)")
            for request, outcome in executor.wait(timeout=1.0):
                run_entry = started.pop(request.key)
                elapsed = time.monotonic() - start
                if outcome.result is not None:
                    write_result(out, outcome.result)
                    _rebuild(out, run_entry["dataset"], baselines, final=False)
                entry = _finished_entry(run_entry, outcome, elapsed)
                record.runs.append(entry)
                # Saved after every run: a plan cut off (machine taken back) keeps its record.
                write_json(record_path, asdict(record))
                why = "" if entry["status"] == "ok" else f" ({entry.get('error', '?')})"
                echo(
                    f"finished {entry['dataset']} {entry['name'] or entry['model']} "
                    f"seed {entry['seed']}: {entry['status']}{why} after "
                    f"{entry['end_s'] - entry['start_s']:.0f} s"
                )
    except BaseException:  # interrupted: stop the runs it started, keep the record
        if restore_sigterm is not None:
            # A second signal (`uv run` forwards the one it got; a scheduler may repeat its own)
            # must not cut this cleanup short and leave runs behind with no record.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        executor.cancel()
        for entry in started.values():
            record.runs.append({**entry, "status": "interrupted", "interrupted": True})
        write_json(record_path, asdict(record))
        raise
    finally:
        executor.close()
        if restore_sigterm is not None:
            signal.signal(signal.SIGTERM, restore_sigterm)
            signal.signal(signal.SIGINT, restore_sigint)
    for dataset in sorted({r.dataset for r in runs}):
        _rebuild(out, dataset, baselines)
    record.finished_at = _now()
    write_json(record_path, asdict(record))
    return record
