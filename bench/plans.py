"""Run plans: many ``bench run`` invocations as parallel processes, within a wall-clock deadline.

A plan (``configs/plans/<name>.yaml``) lists jobs; each job is one model (or a list of models) on
one dataset, over seeds, with optional settings, a run name (a variant row) and a training budget:

    defaults: {seeds: [0], budget_s: 600}
    jobs:
      - {dataset: amazon-beauty, models: [SASRec, SLIME4Rec], seeds: [0, 1, 2]}
      - {dataset: amazon-beauty, models: [HybridContrastVAE], name: HybridContrastVAE-dirichlet,
         set: {latent: dirichlet}, seeds: [0, 1, 2]}
      - {dataset: ml-1m, models: all}   # the dataset's suite, as ``bench run --models all``
    baselines: {amazon-beauty: HybridContrastVAE}   # optional: leaderboards' --baseline

Every (model, seed) becomes its own ``python -m bench run`` process, so a plan fills a many-core
GPU machine; jobs start in the plan's order as slots free up. With a deadline, a job that starts
late gets the time that is left (its ``time_budget_s`` shrinks) and one that would get less than
``min_budget_s`` is not started: the plan ends on time and says what it left out. Every run goes
through the pre-flight (:mod:`bench.preflight`) before the first process starts, so a plan with a
misspelt setting or missing data fails at once, not in its hundredth process. The plan's
record (commands, exit codes, times, what was skipped) is written to ``<out>/plans/<plan>.json``;
each process's output to ``<out>/plans/<plan>/logs/``. The leaderboards are rebuilt at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import configs, leaderboard
from bench.configs import ConfigTree
from bench.errors import BenchError
from bench.io import write_json

JOB_KEYS = frozenset({"dataset", "models", "seeds", "name", "set", "budget_s", "epochs"})
PLAN_KEYS = frozenset({"defaults", "jobs", "baselines"})


@dataclass
class PlannedRun:
    """One ``bench run`` process of a plan."""

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
        """The ``bench run`` command line of this run with the given training budget."""
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
    runs: list[PlannedRun] = []
    for number, job in enumerate(jobs, start=1):
        if not isinstance(job, dict):
            raise BenchError(f"plan {path}: job {number} is not a mapping")
        job = {**defaults, **job}
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


def _preflight(
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


def _finished(run: PlannedRun, prepared: Any, out: Path) -> bool:
    """Whether a result exists that this run would only repeat: same settings, and not cut off
    by a smaller budget than this run's (a capped CPU run does not stand in for a GPU run)."""
    from bench.contract import completed
    from bench.preflight import resume_settings

    return completed(out, run.dataset, run.label, run.seed, resume_settings(prepared))


@dataclass
class PlanRecord:
    plan: str
    started_at: str
    parallel: int
    deadline_s: float
    runs: list[dict[str, Any]] = field(default_factory=list)
    not_started: list[dict[str, Any]] = field(default_factory=list)
    finished_at: str | None = None
    # With --resume: the records of the earlier, cut-off executions of the same plan, oldest first.
    earlier: list[dict[str, Any]] = field(default_factory=list)


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def execute(
    plan_path: str | os.PathLike,
    *,
    out: str | os.PathLike = "results",
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    parallel: int = 1,
    deadline_s: float = 0,
    reserve_s: float = 120,
    min_budget_s: float = 60,
    threads: int = 1,
    resume: bool = False,
    dry_run: bool = False,
    echo: Any = print,
    config_tree: ConfigTree | None = None,
) -> PlanRecord:
    """Run a plan's runs, ``parallel`` at a time, and rebuild the leaderboards of its datasets.
    ``config_tree``: the configuration every run reads (default: the repository's; the runs'
    processes get it through ``$BENCH_CONFIG_DIR``)."""
    plan_path = Path(plan_path)
    tree = config_tree or ConfigTree.default()
    runs = load_plan(plan_path, tree)
    baselines = load_baselines(plan_path, tree)
    out = Path(out)
    data = Path(data_dir) if data_dir is not None else None
    if parallel < 1:
        raise BenchError("--parallel must be at least 1")
    record = PlanRecord(plan_path.stem, _now(), parallel, deadline_s)
    if dry_run:
        for run in runs:
            echo(shlex.join(run.command(run.budget_s, device, out, data, resume)))
        return record
    prepared = _preflight(runs, device, data, tree)
    logs = out / "plans" / plan_path.stem / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # One thread per process: a plan runs many processes on shared cores.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        configs.CONFIG_DIR_ENV: str(tree.root),
    }
    start = time.monotonic()
    queue = list(runs)
    active: list[tuple[subprocess.Popen, dict[str, Any], Any]] = []
    record_path = out / "plans" / f"{plan_path.stem}.json"
    if resume:
        if record_path.exists():
            previous = json.loads(record_path.read_text(encoding="utf-8"))
            record.earlier = [*previous.pop("earlier", []), previous]
        done = [r for r in queue if _finished(r, prepared[r.key], out)]
        for run in done:
            echo(f"skipped {run.key}: result exists (--resume)")
        queue = [r for r in queue if r not in done]
    # `kill` (or a scheduler taking the machine back) stops a plan as Ctrl-C does: the runs it
    # started are stopped and its record is kept. Only the main thread may set a handler.
    restore_sigterm = None
    if threading.current_thread() is threading.main_thread():
        restore_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        restore_sigint = signal.getsignal(signal.SIGINT)
    try:
        while queue or active:
            while queue and len(active) < parallel:
                run = queue.pop(0)
                elapsed = time.monotonic() - start
                budget = granted_budget(run.budget_s, elapsed, deadline_s, reserve_s)
                if deadline_s > 0 and budget < min_budget_s:
                    record.not_started.append({**asdict(run), "why": f"{budget:.0f} s left"})
                    echo(f"not started {run.key}: {budget:.0f} s left before the deadline")
                    continue
                cmd = run.command(budget, device, out, data, resume)
                log = open(logs / f"{run.key}.log", "w", encoding="utf-8")  # noqa: SIM115
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                entry = {**asdict(run), "granted_budget_s": budget, "command": shlex.join(cmd)}
                entry["start_s"] = round(elapsed, 1)
                active.append((proc, entry, log))
                echo(f"started {run.key} (budget {budget:.0f} s)")
            time.sleep(0.5)
            for item in list(active):
                proc, entry, log = item
                if proc.poll() is None:
                    continue
                log.close()
                entry["returncode"] = proc.returncode
                entry["end_s"] = round(time.monotonic() - start, 1)
                record.runs.append(entry)
                active.remove(item)
                # Saved after every run: a plan cut off (machine taken back) keeps its record.
                write_json(record_path, asdict(record))
                echo(
                    f"finished {entry['dataset']} {entry['name'] or entry['model']} "
                    f"seed {entry['seed']}: exit {proc.returncode} after "
                    f"{entry['end_s'] - entry['start_s']:.0f} s"
                )
    except BaseException:  # interrupted: stop the runs it started, keep the record
        if restore_sigterm is not None:
            # A second signal (`uv run` forwards the one it got; a scheduler may repeat its own)
            # must not cut this cleanup short and leave runs behind with no record.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for proc, entry, log in active:
            proc.terminate()
            proc.wait()
            log.close()
            record.runs.append({**entry, "returncode": proc.returncode, "interrupted": True})
        write_json(record_path, asdict(record))
        raise
    finally:
        if restore_sigterm is not None:
            signal.signal(signal.SIGTERM, restore_sigterm)
            signal.signal(signal.SIGINT, restore_sigint)
    for dataset in sorted({r.dataset for r in runs}):
        if dataset in baselines:
            leaderboard.write(
                out, dataset, baselines[dataset], leaderboard.written_test(out, dataset)
            )
        else:
            leaderboard.refresh(out, dataset)
    record.finished_at = _now()
    write_json(record_path, asdict(record))
    return record
