"""The run contract: what a run was asked (:class:`RunOptions`) and what happened
(:class:`RunResult`, with RecBole-side :class:`~recbole_ext.training.EpochRecord` per epoch),
typed and versioned. Results are written and read only here:

``<out>/runs/<dataset>/<model>/seed-<seed>.json``        the run's result (:data:`SCHEMA`)
``<out>/runs/<dataset>/<model>/seed-<seed>.users.npz``   its per-user test values: ``user_id``
                                                         (raw tokens) and one float array per
                                                         metric@k, in the same user order

:func:`read_result` migrates a record of an older schema in code (:data:`MIGRATIONS`), so a
stored result is never edited by hand when the contract changes. Schema 1 to 2: the stop reason
(inferred from ``stopped_by_budget``, the epochs run against ``config.epochs`` and the status)
and the code version (the commit the run recorded) became fields. Schema 2 to 3: the
environment says how glibc's malloc ran (``environment.malloc``, :mod:`bench.allocator`; None in
the records before).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.configs import ConfigTree
from bench.errors import BenchError
from bench.io import write_json
from recbole_ext.data import HarnessSettings
from recbole_ext.training import EpochRecord

SCHEMA = 3
# How a run ended: its own stopping rule, its epoch limit, its training time budget, or an error.
STOP_REASONS = ("early_stopping", "epoch_limit", "time_budget", "failed")


@dataclass
class RunOptions:
    """What the user asked for one run."""

    dataset: str
    model: str
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # --epochs / --set, highest priority
    config_files: list[Path] = field(default_factory=list)  # --config files
    quick: bool = False
    # A folder of tuned files (``bench tune``'s ``<out>/tuned``): layer its
    # <dataset>/<Model>.yaml over the model defaults. None: no tuned layer.
    tuned_from: Path | None = None
    device: str = "auto"
    data_dir: str | None = None
    cache_dir: Path | None = None
    name: str | None = None  # the leaderboard row (and results folder); default: the model
    # Where the run keeps its checkpoints (<root>/<dataset>/<label>/seed-<seed>-<key>/) while it
    # trains, so that a killed run can continue; None: a temporary folder, removed at the end.
    checkpoint_root: Path | None = None
    resume: bool = False  # continue from the run's last checkpoint, if one is there
    concurrent_runs: int = 1  # runs sharing this machine's cores (the default thread count)
    config_tree: ConfigTree = field(default_factory=ConfigTree.default)

    @property
    def label(self) -> str:
        """The name the run is stored and ranked under."""
        return self.name or self.model


# --- the parts of a result ---------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds of a run's phases. A resumed run: the epoch this sitting began with (and the
    batch, inside it) and the training time of the sittings before it."""

    data_seconds: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    total_seconds: float | None = None
    resumed_from_epoch: int | None = None
    earlier_train_seconds: float = 0.0
    # Resumed inside that epoch (``checkpoint_every_s``): the batches it had trained on before.
    resumed_from_batch: int | None = field(default=None, metadata={"omit_none": True})

    @property
    def train_seconds_all_sittings(self) -> float | None:
        """Training time of the whole run: this sitting's and the earlier sittings' of a resumed
        run (``train_seconds`` alone is this sitting's)."""
        if self.train_seconds is None:
            return None
        return self.train_seconds + self.earlier_train_seconds

    @property
    def total_seconds_all_sittings(self) -> float | None:
        """``total_seconds`` plus the earlier sittings' training time of a resumed run."""
        if self.total_seconds is None:
            return None
        return self.total_seconds + self.earlier_train_seconds


@dataclass
class PhaseMemory:
    """Peak memory of one phase (``bench.memory``): CPU resident memory or CUDA allocations."""

    kind: str | None = None  # "cpu_rss" or "cuda_allocated"
    peak_mib: float | None = None
    start_mib: float | None = None
    exact: bool | None = None
    reserved_mib: float | None = field(default=None, metadata={"omit_none": True})  # CUDA only


@dataclass
class Memory:
    """Peak memory of training (validations included) and of the test pass."""

    train: PhaseMemory | None = None
    test: PhaseMemory | None = None


@dataclass
class DataInfo:
    """The data a run read: where, its files' sha256, and what came out of splitting it."""

    path: str | None = None  # <data_path>/<data name>
    sha256: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # how the folder was found (--data-dir, ./data, recbole wheel)
    cached: bool | None = None
    users: int | None = None
    items: int | None = None
    interactions: int | None = None
    train_samples: int | None = None
    valid_users: int | None = None
    test_users: int | None = None


@dataclass
class Environment:
    """What ran it: package versions, the checkout's HEAD, the machine and the device."""

    packages: dict[str, str | None] = field(default_factory=dict)
    git_commit: str | None = None  # HEAD, with -dirty (see code_version for the row's code)
    python: str | None = None
    platform: str | None = None
    cpu_count: int | None = None
    device: str | None = None
    device_name: str | None = None
    # glibc's malloc during the run (bench.allocator): kept, environment or system; it moves
    # the run's seconds and peak memory, not its results.
    malloc: str | None = None
    # Where a run on Ray ran (bench.executor): the worker's host name and Ray's node id. Runs in
    # this process or a local pool leave both out of the record.
    host: str | None = field(default=None, metadata={"omit_none": True})
    ray_node_id: str | None = field(default=None, metadata={"omit_none": True})


@dataclass
class RunError:
    """Why a run failed."""

    type: str | None = None
    message: str = ""
    traceback: str | None = None

    @property
    def first_line(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


@dataclass
class RunResult:
    """What happened in one run (``status`` ``ok`` or ``failed``)."""

    status: str
    dataset: str
    model: str  # the leaderboard row (a variant's name, or the model's)
    seed: int
    model_class: str | None = None
    family: str | None = None
    source: str | None = None
    quick: bool = False
    config_hash: str | None = None
    valid_metric: str | None = None
    best_epoch: int | None = None
    stop_reason: str | None = None  # one of STOP_REASONS
    # The last commit that changed anything outside results/ (with -dirty as the checkout was):
    # a commit that only adds results does not make the next run look like other code.
    code_version: str | None = None
    best_valid_score: float | None = None
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    epochs: list[EpochRecord] = field(default_factory=list)
    pretrain_epochs: list[EpochRecord] = field(default_factory=list)
    timing: Timing | None = None
    memory: Memory | None = None
    data: DataInfo | None = None
    config: dict[str, Any] = field(default_factory=dict)  # resolved, as the run computed with
    environment: Environment | None = None
    command: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    per_user_file: str | None = None
    error: RunError | None = None
    amended: str | None = None  # a note on a record that was corrected by hand (schema 1)
    schema: int = SCHEMA
    # Per-user test values on their way to the .users.npz file (never in the JSON).
    per_user: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def stopped_by_budget(self) -> bool:
        return self.stop_reason == "time_budget"

    @property
    def epochs_run(self) -> int:
        return len(self.epochs)

    def to_json(self) -> dict[str, Any]:
        """The JSON record (schema first; no per-user arrays)."""
        record: dict[str, Any] = {"schema": self.schema}
        for f in dataclasses.fields(self):
            if f.name not in ("schema", "per_user"):
                record[f.name] = _plain(getattr(self, f.name))
        return record


def _plain(value: Any) -> Any:
    """Dataclasses (typed parts, epoch records) as JSON mappings, None-valued optional keys out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.metadata.get("omit_none") and getattr(value, f.name) is None)
        }
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _typed(cls: type, value: Any, where: str) -> Any:
    """``value`` (a JSON mapping, or None) as ``cls``; unknown keys are an error."""
    if value is None:
        return None
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return cls(**value)


def _memory(value: Any) -> Memory | None:
    if value is None:
        return None
    memory = _typed(Memory, value, "memory")
    memory.train = _typed(PhaseMemory, memory.train, "memory.train")
    memory.test = _typed(PhaseMemory, memory.test, "memory.test")
    return memory


def _epochs(where: str) -> Callable[[Any], list[EpochRecord]]:
    return lambda value: [_typed(EpochRecord, e, where) for e in value or []]


def _error(value: Any) -> RunError | None:
    return _typed(RunError, value, "error")


# RunResult's typed fields and how each is read from JSON.
_TYPED_PARTS: dict[str, Callable[[Any], Any]] = {
    "timing": lambda v: _typed(Timing, v, "timing"),
    "memory": _memory,
    "data": lambda v: _typed(DataInfo, v, "data"),
    "environment": lambda v: _typed(Environment, v, "environment"),
    "error": _error,
    "epochs": _epochs("epochs"),
    "pretrain_epochs": _epochs("pretrain_epochs"),
}
_REQUIRED = ("status", "dataset", "model", "seed")


# --- schema migrations -------------------------------------------------------------------------


def infer_stop_reason(
    status: str | None, stopped_by_budget: bool, epochs_run: int, epoch_limit: Any
) -> str:
    """How a run ended, from what every record holds (schema 1 kept no stop reason; a trainer
    with its own fit loop reports none)."""
    if status != "ok":
        return "failed"
    if stopped_by_budget:
        return "time_budget"
    if epoch_limit is not None and epochs_run >= int(epoch_limit):
        return "epoch_limit"
    return "early_stopping"


def _schema_1_to_2(record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    stopped = bool(record.pop("stopped_by_budget", False))
    if record.get("stop_reason") is None:
        epochs = record.get("epochs") or []
        limit = (record.get("config") or {}).get("epochs")
        record["stop_reason"] = infer_stop_reason(record.get("status"), stopped, len(epochs), limit)
    if record.get("code_version") is None:
        # Schema 1 kept HEAD only: the code version of those runs is the commit they recorded.
        record["code_version"] = (record.get("environment") or {}).get("git_commit")
    error = record.get("error")
    if isinstance(error, str):  # an ablation's failed run kept the first line only
        record["error"] = {"message": error}
    record["schema"] = 2
    return record


def _schema_2_to_3(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "schema": 3}  # environment.malloc: not known, stays unset


# schema N -> its record as schema N + 1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _schema_1_to_2,
    2: _schema_2_to_3,
}


def parse_result(record: Mapping[str, Any]) -> RunResult:
    """A JSON record of any schema so far as a :class:`RunResult` (migrated in memory).
    Raises ValueError for a record that is not one."""
    record = dict(record)
    version = record.get("schema", 1)  # the first records carried no version
    if not isinstance(version, int) or not 1 <= version <= SCHEMA:
        raise ValueError(f"unknown result schema {version!r} (this code reads 1 to {SCHEMA})")
    while version < SCHEMA:
        record = MIGRATIONS[version](record)
        version = record["schema"]
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise ValueError(f"not a result: no {', '.join(missing)}")
    names = {f.name for f in dataclasses.fields(RunResult)} - {"per_user"}
    unknown = sorted(set(record) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}")
    for key, parse in _TYPED_PARTS.items():
        if key in record:
            record[key] = parse(record[key])
    result = RunResult(**record)
    if result.stop_reason not in STOP_REASONS:
        raise ValueError(f"unknown stop_reason {result.stop_reason!r}")
    return result


# --- config hash ---------------------------------------------------------------------------------

# Keys that describe where or how a run executes, not what it computes: left out of config_hash
# (and of what --resume compares). The harness's are those whose field says they change no result.
RECBOLE_PLACEMENT_KEYS = frozenset(
    {
        "seed",
        "device",
        "gpu_id",
        "use_gpu",
        "checkpoint_dir",
        "data_path",
        "config_files",
        "show_progress",
        "worker",
        "local_rank",
        "single_spec",
        "state",
        # A two-stage model's fine-tuning reads its pre-trained weights from the run's own folder.
        "pre_model_path",
    }
)
PLACEMENT_KEYS = RECBOLE_PLACEMENT_KEYS | HarnessSettings.placement_keys()


def config_hash(config: Mapping[str, Any]) -> str:
    """Hash of what a run computes: the resolved config without seed and placement keys."""
    relevant = {k: v for k, v in config.items() if k not in PLACEMENT_KEYS}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# --- files --------------------------------------------------------------------------------------


def runs_dir(out: str | os.PathLike, dataset: str | None = None) -> Path:
    """Where results live: ``<out>/runs``, or one dataset's folder ``<out>/runs/<dataset>``."""
    root = Path(out) / "runs"
    return root / dataset if dataset else root


def _result_name(seed: int | str) -> str:
    """A result file's name: ``seed-<seed>.json`` (``"*"`` gives the glob of them all)."""
    return f"seed-{seed}.json"


def run_path(out: str | os.PathLike, dataset: str, model: str, seed: int) -> Path:
    return runs_dir(out, dataset) / model / _result_name(seed)


def per_user_path(result_path: str | os.PathLike) -> Path:
    return Path(result_path).with_suffix(".users.npz")


def write_result(out: str | os.PathLike, result: RunResult) -> Path:
    """Write the result JSON, and its per-user values (if it carries them) beside it."""
    path = run_path(out, result.dataset, result.model, result.seed)
    npz = per_user_path(path)
    per_user_file = result.per_user_file
    if result.per_user:
        npz.parent.mkdir(parents=True, exist_ok=True)
        tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in result.per_user.items()})
        os.replace(tmp, npz)
        per_user_file = npz.name
    elif per_user_file is None:
        npz.unlink(missing_ok=True)  # a stale file from an earlier run must not pair with this one
    record = dataclasses.replace(result, per_user_file=per_user_file, per_user=None)
    return write_json(path, record.to_json())


def write_record(path: str | os.PathLike, result: RunResult | None, **extra: Any) -> Path:
    """A result's record with ``extra`` top-level keys (a tuning trial's ``trial`` and outcome
    ``status``, an ablation run's ``variant``), outside ``runs/``: these files are kept for
    people and never read back as results."""
    record = result.to_json() if result is not None else {}
    record.update({k: _plain(v) for k, v in extra.items()})
    return write_json(path, record)


def read_per_user(result_path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The per-user test values stored beside a result JSON, or None."""
    npz = per_user_path(result_path)
    if not npz.is_file():
        return None
    with np.load(npz, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_result(path: str | os.PathLike) -> RunResult | None:
    """A result file as a :class:`RunResult`, or None when it is missing or not JSON. A file
    that is JSON but not a result of a known schema is a :class:`BenchError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    try:
        return parse_result(record)
    except (ValueError, TypeError) as exc:
        raise BenchError(f"malformed result {path}: {exc}") from exc


def load_results(out: str | os.PathLike, dataset: str | None = None) -> list[RunResult]:
    """Every readable result under ``<out>/runs`` (of one dataset, if given), in path order."""
    pattern = f"{dataset or '*'}/*/{_result_name('*')}"
    results = [read_result(p) for p in sorted(runs_dir(out).glob(pattern))]
    return [r for r in results if r is not None]


# --- what --resume counts as done ----------------------------------------------------------------


def completed(
    out: str | os.PathLike,
    dataset: str,
    model: str,
    seed: int,
    wanted: dict[str, Any] | None = None,
) -> bool:
    """Whether a successful result exists that a run configured with ``wanted`` would only
    repeat (``--resume`` skips those; failed runs run again). See :func:`answers`."""
    result = read_result(run_path(out, dataset, model, seed))
    return result is not None and result.ok and answers(result, wanted or {})


def answers(result: RunResult, wanted: dict[str, Any]) -> bool:
    """Whether ``result`` is what a run configured with ``wanted`` computes.

    Every wanted scalar or list the result's config holds must agree (a model default changed
    since, such as a patience, means a run again). Nested settings and unset ones are left out:
    RecBole rewrites those when it resolves a config (``mode: full`` becomes one mode per split,
    an unset negative sampling a dict of ``none``). A run its time budget stopped is reused only
    for a budget no larger than its own (``time_budget_s`` 0 wants no cap, so it trains on).
    """
    config = result.config
    if result.stopped_by_budget:
        cap = float(config.get("time_budget_s") or 0)
        budget = float(wanted.get("time_budget_s") or 0)
        if budget <= 0 or budget > cap:
            return False
    return all(
        _agrees(config[key], value)
        for key, value in wanted.items()
        if key != "time_budget_s"
        and key in config
        and value is not None
        and not isinstance(value, dict)
    )


def _agrees(have: Any, want: Any) -> bool:
    if isinstance(want, list | tuple):
        return (
            isinstance(have, list | tuple)
            and len(have) == len(want)
            and all(_agrees(h, w) for h, w in zip(have, want, strict=True))
        )
    if isinstance(want, int | float) and not isinstance(want, bool):
        try:
            return abs(float(have) - float(want)) <= 1e-9 * max(1.0, abs(float(want)))
        except (TypeError, ValueError):
            return False
    return have == want or str(have) == str(want)
