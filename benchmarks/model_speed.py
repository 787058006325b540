"""Per-model speed table, and the harness against stock RecBole 1.2.1 (``--stock MODEL``).

For each of ``--models`` (default: the dataset's suite in ``configs/suites.yaml``) on
``--dataset``, in a fresh subprocess per model, built exactly as ``bench run`` builds it
(``bench.runner.prepare``'s config layering, ``recbole_ext.data`` with the dataset cache under
``--cache-dir``, ``recbole_ext.training.recording_trainer``):

- training: ``--warmup-steps`` untimed steps, then one epoch through the trainer's own
  ``_train_epoch`` (so RecVAE's alternating passes, KG modes ... are what ``bench run`` does),
  capped at ``--max-steps`` batches a pass (0: the whole epoch); seconds, steps measured, steps
  per epoch and, when capped, the *projected* epoch seconds (seconds per step x steps per epoch).
  Models fitted in one pass (Pop, ItemKNN, EASE, ...: RecBole's TraditionalTrainer) run their one
  epoch uncapped and unwarmed, as ``bench run`` does; ItemKNN and EASE fit when the model is built,
  so ``build_seconds`` is given too. S3Rec's pre-training stage is skipped (``pretrain_epochs``
  0: fine-tuning starts from untrained weights);
- one full validation: ``_valid_epoch`` on every validation user (full ranking, the harness's
  history exclusion, top-k and metrics), the path ``fit`` takes;
- peak memory per phase: on CUDA ``max_memory_allocated`` and ``max_memory_reserved``; on CPU
  the process's peak resident memory (VmHWM, reset per phase through ``/proc/self/clear_refs``);
- parameter count. A model that fails or passes ``--time-limit-per-model`` is recorded with its
  one-line error; the others go on.

``--stock MODEL``: the same model, dataset, config, device and steps through stock RecBole 1.2.1
(``Config``, ``create_dataset``, ``data_preparation``, ``recbole.trainer.Trainer``) with only
the compat fixes it cannot run without (``STOCK_FIXES``, applied from ``recbole_ext/compat.py``
loaded by path, since importing ``recbole_ext`` applies all of them), against the harness (every
fix, harness data and trainer), each side in its own subprocess, ``--stock-rounds`` alternating
rounds. Stock keeps RecBole's anomaly detection (switched on by ``sine.py`` at import) and its
TensorBoard writer (in a temporary working directory).

Writes ``<out>/model_speed_<dataset>_<device>.{json,md}`` atomically. Commands in
``benchmarks/README.md``. Imports neither Ray nor Optuna.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` and ``recbole_ext`` importable
    sys.path.insert(0, str(REPO))

from bench.io import write_text  # noqa: E402  (standard library only: safe in the stock worker)

SCHEMA = 1
# What stock RecBole 1.2.1 needs to run SASRec-like models at all here (NumPy 2: its Config
# assigns the removed np.float_). Not "config" (argv and CUDA_VISIBLE_DEVICES: no crash),
# "dataset_fillna" (no empty cells or token_seq columns in these datasets), "trainer" (evaluation
# without a checkpoint reload never calls torch.load), "scipy_dok_update" (graph models only).
STOCK_FIXES: tuple[str, ...] = ("numpy_aliases",)
DEFAULT_MAX_STEPS = 50
DEFAULT_WARMUP = 2
DEFAULT_TIME_LIMIT = 150.0


def log(message: str) -> None:
    print(message, flush=True)


def _compat_module() -> Any:
    """``recbole_ext/compat.py`` loaded by path, so that ``recbole_ext/__init__`` (which applies
    every fix) does not run."""
    spec = importlib.util.spec_from_file_location(
        "recbole_bench_compat_alone", REPO / "recbole_ext" / "compat.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- measuring (inside a worker) --------------------------------------------------------------
class CappedLoader:
    """A training dataloader that yields at most ``cap`` batches per pass (None: all) and counts
    the passes and batches; everything else is the wrapped loader's."""

    def __init__(self, loader: Any, cap: int | None) -> None:
        self._loader = loader
        self.cap = cap
        self.passes = 0
        self.batches = 0

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        for i, batch in enumerate(self._loader):
            self.batches += 1
            yield batch
            if self.cap is not None and i + 1 >= self.cap:
                return  # stop before the loader collates a batch that is not used

    def __len__(self) -> int:
        n = len(self._loader)
        return n if self.cap is None else min(n, self.cap)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class Phase:
    """Wall seconds (CUDA synchronized), peak memory (:mod:`bench.memory`), the process's CPU
    seconds and its minor page faults of one phase.

    ``cpu_seconds`` reads the process's CPU clock (``time.process_time``: every thread, exact).
    ``user_seconds`` and ``system_seconds`` are ``getrusage``'s split of that time, which the
    kernel apportions from timer ticks: a phase shorter than a few ticks can show all of it on
    one side."""

    def __init__(self, device: Any, release: bool = True) -> None:
        self.device = device
        self.release = release  # bench.memory.PeakRSS's
        self.seconds = 0.0
        self.memory: dict[str, float | None] = {}
        self.cpu: dict[str, float] = {}

    def __enter__(self) -> Phase:
        from bench.memory import PeakMemory

        self._peak = PeakMemory(self.device, self.release).start()
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu_start = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        cpu_seconds = time.process_time() - self._cpu_start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = {
            "cpu_seconds": cpu_seconds,
            "user_seconds": usage.ru_utime - self._usage.ru_utime,
            "system_seconds": usage.ru_stime - self._usage.ru_stime,
            "minor_faults": usage.ru_minflt - self._usage.ru_minflt,
        }
        peak = self._peak.stop()
        if self.device.type == "cuda":
            self.memory = {
                "max_allocated_mib": peak["peak_mib"],
                "max_reserved_mib": peak["reserved_mib"],
            }
        else:
            self.memory = {
                "peak_rss_mib": peak["peak_mib"],
                "rss_at_start_mib": peak["start_mib"],
                "peak_rss_exact": peak["exact"],
            }


def _train_and_validate(trainer: Any, train: Any, valid: Any, job: dict[str, Any]) -> dict:
    """What ``fit`` does before its first epoch, then the timed epoch and one validation."""
    import torch
    from recbole.trainer.trainer import TraditionalTrainer

    device = torch.device(trainer.config["device"])
    trainer.eval_collector.data_collect(train)
    if (trainer.config["train_neg_sample_args"] or {}).get("dynamic", False):
        train.get_model(trainer.model)
    one_pass = isinstance(trainer, TraditionalTrainer)
    max_steps = int(job["max_steps"]) or None
    if not one_pass and job["warmup_steps"]:
        trainer._train_epoch(CappedLoader(train, int(job["warmup_steps"])), 0)
    loader = CappedLoader(train, None if one_pass else max_steps)
    # keep_heap: the timed steps (and the validation) run on the heap the warm-up steps left, as
    # in a long run (benchmarks/malloc_speed.py); a phase's peak then includes what malloc holds.
    with Phase(device, release=not job.get("keep_heap", False)) as phase:
        trainer._train_epoch(loader, 1)
    steps_per_epoch = len(train) * loader.passes
    projected = loader.batches < steps_per_epoch
    per_step = phase.seconds / max(loader.batches, 1)
    training = {
        "seconds": phase.seconds,
        "steps": loader.batches,
        "steps_per_epoch": steps_per_epoch,
        "passes": loader.passes,
        "seconds_per_step": per_step,
        "epoch_seconds": per_step * steps_per_epoch if projected else phase.seconds,
        "projected": projected,
        "one_pass_model": one_pass,
        "warmup_steps": 0 if one_pass else int(job["warmup_steps"]),
        "memory": phase.memory,
        "cpu": phase.cpu,
    }
    with Phase(device, release=not job.get("keep_heap", False)) as phase:
        score, _ = trainer._valid_epoch(valid, show_progress=False)
    users = valid._dataset.inter_feat[valid._dataset.uid_field].unique().numel()
    evaluation = {
        "seconds": phase.seconds,
        "users": int(users),
        "batches": len(valid),
        "valid_score": float(score),
        "memory": phase.memory,
        "cpu": phase.cpu,
    }
    return {"train": training, "eval": evaluation}


def _params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def measure_harness(job: dict[str, Any]) -> dict[str, Any]:
    """One model built as ``bench.runner.execute`` builds it; see the module docstring."""
    from recbole.config import Config
    from recbole.utils import init_seed

    from recbole_ext import compat

    compat.apply()
    from bench.allocator import keep_freed_memory
    from bench.contract import RunOptions
    from bench.preflight import prepare
    from bench.runner import build_model
    from recbole_ext.data import load_dataset, prepare_data
    from recbole_ext.training import needs_pretraining, pretrain, recording_trainer

    notes: list[str] = []
    settings = dict(job["settings"])
    request = RunOptions(
        dataset=job["dataset"],
        model=job["model"],
        settings=settings,
        device=job["device"],
        data_dir=job["data_dir"],
        cache_dir=Path(job["cache_dir"]),
    )
    prepared = prepare(request)
    if str(prepared.config_dict.get("train_stage", "")) == "pretrain":
        settings["pretrain_epochs"] = 0
        prepared = prepare(request)
        notes.append("pre-training skipped (pretrain_epochs 0): fine-tuning from initial weights")
    checkpoint_dir = tempfile.mkdtemp(prefix="model-speed-ckpt-")
    try:
        config_dict = dict(prepared.config_dict)
        config_dict.update(data_path=str(prepared.data_path), checkpoint_dir=checkpoint_dir)
        config = Config(
            model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
        )
        malloc = keep_freed_memory()  # where bench.runner.execute does it
        init_seed(config["seed"], config["reproducibility"])
        t0 = time.perf_counter()
        dataset, cached = load_dataset(config, request.cache_dir)
        data = prepare_data(config, dataset)
        data_seconds = time.perf_counter() - t0
        if needs_pretraining(config):
            pretrained = pretrain(config, prepared.spec.cls, data.train, data.model_dataset).path
            config_dict.update(train_stage="finetune", pre_model_path=str(pretrained))
            config = Config(
                model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
            )
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        t1 = time.perf_counter()
        model = build_model(prepared.spec.cls, config, data, prepared.settings)
        build_seconds = time.perf_counter() - t1
        trainer = recording_trainer(config, model)
        with warnings.catch_warnings():  # as bench.runner.recbole_warnings_silenced
            warnings.filterwarnings("ignore", category=FutureWarning, module="recbole")
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            measured = _train_and_validate(trainer, data.train, data.valid, job)
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return {
        "family": prepared.spec.family,
        "malloc": malloc,
        "trainer": type(trainer).__bases__[-1].__name__,  # RecBole's, under the recording mixin
        "params": _params(model),
        "data": {
            "seconds": data_seconds,
            "cached": cached,
            "train_samples": len(data.train._dataset),
        },
        "build_seconds": build_seconds,
        **measured,
        "fixes": "all",
        "notes": notes,
    }


def measure_stock(job: dict[str, Any]) -> dict[str, Any]:
    """Stock RecBole 1.2.1 with ``job['fixes']`` only; see the module docstring."""
    compat = _compat_module()
    fixes = list(job["fixes"])
    notes: list[str] = []
    if importlib.util.find_spec("tensorboard") is None and "tensorboard" not in fixes:
        fixes.append("tensorboard")  # RecBole's Trainer cannot start without the package
        notes.append("tensorboard is not installed here: its fix is needed to start a Trainer")
    compat.apply_only(fixes)
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    work = tempfile.mkdtemp(prefix="model-speed-stock-")
    cwd = os.getcwd()
    os.chdir(work)  # RecBole's TensorBoard writer writes ./log_tensorboard
    try:
        config_dict = dict(job["config_dict"])
        config_dict.update(checkpoint_dir=os.path.join(work, "saved"))
        config = Config(model=job["model"], dataset=job["data_name"], config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        t0 = time.perf_counter()
        dataset = create_dataset(config)
        train, valid, _ = data_preparation(config, dataset)
        data_seconds = time.perf_counter() - t0
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        t1 = time.perf_counter()
        model = get_model(config["model"])(config, train._dataset).to(config["device"])
        build_seconds = time.perf_counter() - t1
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        measured = _train_and_validate(trainer, train, valid, job)
        anomaly = torch.is_anomaly_enabled()
        writer = type(trainer.tensorboard).__name__
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "trainer": type(trainer).__name__,
        "params": _params(model),
        "data": {"seconds": data_seconds, "cached": False, "train_samples": len(train._dataset)},
        "build_seconds": build_seconds,
        **measured,
        "fixes": fixes,
        "anomaly_detection": anomaly,
        "tensorboard_writer": writer,
        "notes": notes,
    }


def run_worker(job_file: Path) -> int:
    """The subprocess: read the job, measure, write the result (atomically) where it says."""
    job = json.loads(job_file.read_text())
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    started = time.perf_counter()
    try:
        measure = measure_stock if job["side"] == "stock" else measure_harness
        result: dict[str, Any] = {"status": "ok", **measure(job)}
    except Exception as exc:  # recorded, and the parent goes on with the next model
        traceback.print_exc()
        message = " ".join(str(exc).split())[:300]
        result = {"status": "failed", "error": f"{type(exc).__name__}: {message}"}
    import torch

    from benchmarks.sequential_speed import machine_info

    device = torch.device(job["device"])
    result["machine"] = machine_info(device if torch.cuda.is_available() else torch.device("cpu"))
    # the stock side must not have imported recbole_ext (which applies every fix)
    result["recbole_ext_imported"] = "recbole_ext" in sys.modules
    result["worker_seconds"] = time.perf_counter() - started
    write_text(Path(job["result"]), json.dumps(result, default=str))
    return 0


# --- the parent -------------------------------------------------------------------------------
def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def make_job(
    args: argparse.Namespace, dataset: str, device: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """A worker's job (JSON) from the options it shares with other benchmarks: ``data_dir``,
    ``max_steps``, ``warmup_steps``, ``threads``, ``cache_dir``; ``side`` and ``model`` are
    added per worker."""
    return {
        "dataset": dataset,
        "device": device,
        "data_dir": args.data_dir,
        "settings": settings,
        "max_steps": args.max_steps,
        "warmup_steps": args.warmup_steps,
        "threads": args.threads,
        "cache_dir": str(Path(args.cache_dir).resolve()),
    }


def spawn(job: dict[str, Any], time_limit: float) -> dict[str, Any]:
    """Run one job in a fresh ``python`` process (its own session, killed whole on time-out)."""
    with tempfile.TemporaryDirectory(prefix="model-speed-") as tmp:
        job = {**job, "result": str(Path(tmp) / "result.json")}
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job, default=str))
        log_path = Path(tmp) / "worker.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **job.get("env", {})}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file)]
        started = time.perf_counter()
        with open(log_path, "w") as out:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = proc.wait(timeout=time_limit)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {
                    "status": "timed out",
                    "error": f"timed out after {time_limit:g} s (--time-limit-per-model)",
                    "wall_seconds": time.perf_counter() - started,
                }
        wall = time.perf_counter() - started
        result_path = Path(job["result"])
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if result["status"] != "ok":
                result["log_tail"] = log_path.read_text()[-2000:]
        else:
            result = {
                "status": "failed",
                "error": f"worker exited with {code}: {_last_line(log_path.read_text())}",
            }
        result["wall_seconds"] = wall
        return result


def _summary(result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result['error']}"
    train, evaluation = result["train"], result["eval"]
    kind = "projected" if train["projected"] else "measured"
    return (
        f"epoch {train['epoch_seconds']:.2f} s ({kind}, {train['steps']}/"
        f"{train['steps_per_epoch']} steps), validation {evaluation['seconds']:.2f} s "
        f"({evaluation['users']} users), {result['params']:,} params, "
        f"{result['wall_seconds']:.0f} s wall"
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def harness_vs_stock(args: argparse.Namespace, base_job: dict[str, Any]) -> dict[str, Any]:
    """Alternating rounds of stock and harness subprocesses for ``--stock``."""
    from bench.contract import RunOptions
    from bench.preflight import prepare

    request = RunOptions(
        dataset=args.dataset,
        model=args.stock,
        settings=base_job["settings"],
        device=args.device,
        data_dir=args.data_dir,
    )
    prepared = prepare(request)  # the config bench run would layer, handed to stock RecBole
    config_dict = {**prepared.config_dict, "data_path": str(prepared.data_path)}
    stock_job = {
        **base_job,
        "side": "stock",
        "model": prepared.spec.name,
        "fixes": list(args.stock_fixes),
        "config_dict": config_dict,
        "data_name": prepared.data_name,
    }
    harness_job = {**base_job, "side": "harness", "model": prepared.spec.name}
    rounds: list[dict[str, Any]] = []
    for r in range(args.stock_rounds):
        order = [("stock", stock_job), ("harness", harness_job)]
        if r % 2:
            order.reverse()
        entry: dict[str, Any] = {}
        for side, job in order:
            log(f"[stock {r + 1}/{args.stock_rounds}] {side} {args.stock} ...")
            entry[side] = spawn(job, args.time_limit_per_model)
            log(f"[stock {r + 1}/{args.stock_rounds}] {side} {args.stock}: {_summary(entry[side])}")
        rounds.append(entry)
    ok = [e for e in rounds if e["stock"]["status"] == "ok" and e["harness"]["status"] == "ok"]

    def med(side: str, *keys: str) -> float | None:
        values = []
        for entry in ok:
            value: Any = entry[side]
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(float(value))
        return _median(values)

    summary: dict[str, Any] = {}
    mem_keys = (
        ["max_allocated_mib", "max_reserved_mib"]
        if args.device.startswith("cuda")
        else ["peak_rss_mib"]
    )
    for side in ("stock", "harness"):
        summary[side] = {
            "epoch_seconds": med(side, "train", "epoch_seconds"),
            "seconds_per_step": med(side, "train", "seconds_per_step"),
            "validation_seconds": med(side, "eval", "seconds"),
            **{f"train_{k}": med(side, "train", "memory", k) for k in mem_keys},
            **{f"eval_{k}": med(side, "eval", "memory", k) for k in mem_keys},
        }
    per_round = [
        {
            "train": _ratio(
                e["harness"]["train"]["epoch_seconds"], e["stock"]["train"]["epoch_seconds"]
            ),
            "validation": _ratio(e["harness"]["eval"]["seconds"], e["stock"]["eval"]["seconds"]),
        }
        for e in ok
    ]
    first_ok = ok[0] if ok else {}
    return {
        "model": prepared.spec.name,
        "rounds": rounds,
        "summary": summary,
        "ratio_harness_over_stock": {
            "train": _median([p["train"] for p in per_round if p["train"] is not None]),
            "validation": _median(
                [p["validation"] for p in per_round if p["validation"] is not None]
            ),
            "per_round": per_round,
        },
        "fixes": {
            "stock": first_ok.get("stock", {}).get("fixes", list(args.stock_fixes)),
            "harness": ["all: " + ", ".join(_compat_fix_names())],
        },
        "stock_anomaly_detection": first_ok.get("stock", {}).get("anomaly_detection"),
        "stock_tensorboard_writer": first_ok.get("stock", {}).get("tensorboard_writer"),
        "differences": [
            "stock: RecBole's create_dataset / data_preparation / Trainer; harness: "
            "recbole_ext.data (dataset cache, train regime, exclude_history_items) and the "
            "recording trainer",
            "exclude_history_items: "
            f"{bool(config_dict.get('exclude_history_items'))} in the harness only (stock ranks "
            "the history items of sequential users too)",
            "stock keeps anomaly detection (sine.py) and the TensorBoard writer",
        ],
    }


def _compat_fix_names() -> list[str]:
    from recbole_ext import compat

    return list(compat.FIXES)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _device_name(machine: dict[str, Any]) -> str:
    return machine.get("gpu") or machine.get("cpu") or "?"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    cuda = report["device"] == "cuda"
    s = report["settings"]
    cap = f"capped at {s['max_steps']} steps a pass" if s["max_steps"] else "uncapped"
    lines = [
        f"# Model speed: {report['dataset']} on {_device_name(m)}",
        "",
        f"Measured {m.get('date', '')} on {report['device']} ({_device_name(m)}; CPU "
        f"{m.get('cpu', '?')}, {m.get('nproc')} cores usable, torch {m.get('torch')}, "
        f"{s['threads'] or 'default'} torch threads, git {m.get('git_commit')}), with",
        "",
        f"    {report['command']}",
        "",
        *([f"Machine: {report['note']}", ""] if report.get("note") else []),
        "Each model in a fresh subprocess, built as `bench run` builds it. Training: "
        f"{s['warmup_steps']} untimed warm-up steps, then one epoch through the trainer's own "
        f"`_train_epoch`, {cap}; **epoch s marked P is projected** (seconds per step x steps "
        "per epoch), unmarked is a whole measured epoch. One-pass models (Pop, ItemKNN, EASE ...) "
        "run their one epoch whole; ItemKNN and EASE fit when built (build s). Validation: one "
        "full-ranking pass over every validation user (`_valid_epoch`). Memory: "
        + (
            "`torch.cuda.max_memory_allocated` / `max_memory_reserved` of each phase (MiB)."
            if cuda
            else "the process's peak resident memory in each phase (MiB; includes the dataset "
            "and the interpreter)."
        ),
        "",
    ]
    mem_head = (
        "train alloc / reserved MiB | eval alloc / reserved MiB"
        if cuda
        else "train peak RSS MiB | eval peak RSS MiB"
    )
    lines += [
        f"| model | family | params | steps timed / epoch | s / step | epoch s | validation s "
        f"| build s | {mem_head} | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["models"]:
        if row["status"] != "ok":
            lines.append(
                f"| {row['model']} |  |  |  |  |  |  |  |  |  | {row['status']}: "
                f"{row['error'].replace('|', '/')} |"
            )
            continue
        t, e = row["train"], row["eval"]
        if cuda:
            mem = (
                f"{_fmt(t['memory']['max_allocated_mib'], 0)} / "
                f"{_fmt(t['memory']['max_reserved_mib'], 0)} | "
                f"{_fmt(e['memory']['max_allocated_mib'], 0)} / "
                f"{_fmt(e['memory']['max_reserved_mib'], 0)}"
            )
        else:
            mem = f"{_fmt(t['memory']['peak_rss_mib'], 0)} | {_fmt(e['memory']['peak_rss_mib'], 0)}"
        status = "ok" + ("; " + "; ".join(row["notes"]) if row.get("notes") else "")
        lines.append(
            f"| {row['model']} | {row.get('family', '')} | {row['params']:,} | "
            f"{t['steps']} / {t['steps_per_epoch']} | {t['seconds_per_step']:.4f} | "
            f"{t['epoch_seconds']:.2f}{' P' if t['projected'] else ''} | {e['seconds']:.2f} | "
            f"{row['build_seconds']:.2f} | {mem} | {status} |"
        )
    stock = report.get("harness_vs_stock")
    if stock:
        lines += ["", *stock_markdown(stock, cuda)]
    return "\n".join(lines) + "\n"


def stock_markdown(stock: dict[str, Any], cuda: bool) -> list[str]:
    model = stock["model"]
    lines = [f"## {model}: the harness against stock RecBole 1.2.1", ""]
    s, h = stock["summary"]["stock"], stock["summary"]["harness"]
    if s["epoch_seconds"] is None or h["epoch_seconds"] is None:
        errors = [
            f"{side}: {entry[side].get('error')}"
            for entry in stock["rounds"]
            for side in ("stock", "harness")
            if entry[side]["status"] != "ok"
        ]
        return [*lines, "No round where both sides ran: " + "; ".join(errors), ""]
    first = next(e for e in stock["rounds"] if e["stock"]["status"] == "ok")
    projected = first["stock"]["train"]["projected"]
    keys = ["max_allocated_mib", "max_reserved_mib"] if cuda else ["peak_rss_mib"]
    mem_head = " | ".join(f"train {k} | eval {k}" for k in keys)
    steps = first["stock"]["train"]["steps"]
    how = f"projected from {steps} timed steps" if projected else "a whole measured epoch"
    lines += [
        f"Medians over {len(stock['rounds'])} round(s), stock and harness alternating, each in its "
        f"own subprocess; epoch seconds: {how}.",
        "",
        f"| side | s / step | epoch s | validation s | {mem_head} |",
        "|---|---:|---:|---:|" + "---:|" * (2 * len(keys)),
    ]
    for side, row in (("stock RecBole", s), ("harness", h)):
        mem = " | ".join(
            f"{_fmt(row[f'train_{k}'], 0)} | {_fmt(row[f'eval_{k}'], 0)}" for k in keys
        )
        lines.append(
            f"| {side} | {row['seconds_per_step']:.4f} | {row['epoch_seconds']:.2f} | "
            f"{row['validation_seconds']:.2f} | {mem} |"
        )
    ratio = stock["ratio_harness_over_stock"]
    lines += [
        "",
        f"**harness / stock: training {_fmt(ratio['train'])}x, validation "
        f"{_fmt(ratio['validation'])}x** (medians of the per-round ratios; below 1 = the harness "
        "is faster).",
        "",
        f"- stock fixes: {', '.join(stock['fixes']['stock'])} (anomaly detection "
        f"{'on' if stock['stock_anomaly_detection'] else 'off'}, TensorBoard writer "
        f"{stock['stock_tensorboard_writer']})",
        f"- harness fixes: {'; '.join(stock['fixes']['harness'])}",
        *[f"- {d}" for d in stock["differences"]],
        "",
    ]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Per-model training / validation speed and peak memory (see the docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--models", default="all", help="comma list, or all: the dataset's suite")
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help="0: whole epoch")
    p.add_argument("--warmup-steps", type=int, default=DEFAULT_WARMUP)
    p.add_argument("--time-limit-per-model", type=float, default=DEFAULT_TIME_LIMIT)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: PyTorch's default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stock", default=None, help="a RecBole model to time through stock RecBole")
    p.add_argument("--stock-rounds", type=int, default=1)
    p.add_argument(
        "--stock-fixes", default=",".join(STOCK_FIXES), help="compat fixes the stock side gets"
    )
    p.add_argument("--note", default="", help="a line about the machine for the report")
    p.add_argument("--cache-dir", default=str(REPO / "results" / "cache" / "datasets"))
    p.add_argument("--out", default=str(REPO / "results" / "perf"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.stock_fixes = [f for f in args.stock_fixes.split(",") if f]
    return args


def run(args: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
    """Measure every model (and ``--stock``) and write the report; returns it."""
    from bench import configs
    from bench.preflight import resolve_device

    device = resolve_device(args.device)  # also refuses cuda where there is none
    dev = str(device)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if names == ["all"]:
        names = configs.ConfigTree.default().suite(args.dataset)
    settings = configs.parse_assignments(args.set) if args.set else {}
    base_job = make_job(args, args.dataset, dev, settings)
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name} ...")
        result = spawn({**base_job, "side": "harness", "model": name}, args.time_limit_per_model)
        log(f"[{i}/{len(names)}] {name}: {_summary(result)}")
        rows.append({"model": name, **result})
    stock = harness_vs_stock(args, base_job) if args.stock else None
    machines = [r["machine"] for r in rows if r.get("machine")]
    if stock:
        machines += [e[s]["machine"] for e in stock["rounds"] for s in e if e[s].get("machine")]
    if machines:
        machine = machines[0]
    else:
        from benchmarks.sequential_speed import machine_info

        machine = machine_info(device)
    for row in rows:
        row.pop("machine", None)
    report = {
        "schema": SCHEMA,
        "dataset": args.dataset,
        "device": device.type,
        "machine": machine,
        "command": command or shlex.join(["python", "benchmarks/model_speed.py", *sys.argv[1:]]),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "max_steps": args.max_steps,
            "warmup_steps": args.warmup_steps,
            "threads": args.threads,
            "time_limit_per_model": args.time_limit_per_model,
            "set": settings,
            "cache_dir": base_job["cache_dir"],
        },
        "note": args.note,
        "models": rows,
        "harness_vs_stock": stock,
    }
    out = Path(args.out)
    stem = f"model_speed_{args.dataset}_{device.type}"
    write_text(out / f"{stem}.json", json.dumps(report, indent=1, default=str) + "\n")
    write_text(out / f"{stem}.md", markdown(report))
    log(f"wrote {out / stem}.json and .md")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(Path(args.worker))
    report = run(args)
    failed = [r["model"] for r in report["models"] if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
