"""One run: (dataset, model, seed) -> a result dict. Configs are resolved and checked here; the
RecBole dataset, model and trainer are built through ``recbole_ext``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import recbole_ext  # noqa: F401  (applies the compatibility patches first)
from bench import configs
from bench.datasets import check_atomic_header, fingerprint, locate
from bench.environment import environment
from bench.errors import BenchError
from bench.memory import PeakMemory
from bench.results import PER_USER_KEY
from recbole_ext import registry
from recbole_ext.data import fold_in, load_dataset, prepare_data
from recbole_ext.training import (
    BudgetExhausted,
    EpochCallback,
    TrainEpochHook,
    needs_pretraining,
    pretrain,
    recording_trainer,
)

RESULT_SCHEMA = 1

# Keys that describe where or how a run executes, not what it computes: left out of config_hash.
_PLACEMENT_KEYS = {
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
    # A cap on training time is not what a run computes (a plan's deadline gives each run a
    # slightly different one); runs it stopped say so in ``stopped_by_budget``.
    "time_budget_s",
    "threads",
    # A two-stage model's fine-tuning reads its pre-trained weights from the run's own folder.
    "pre_model_path",
}


@dataclass
class RunRequest:
    """What the user asked for one run."""

    dataset: str
    model: str
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # --epochs / --set, highest priority
    config_files: list[Path] = field(default_factory=list)  # --config files
    quick: bool = False
    tuned: bool = False  # layer configs/tuned/<dataset>/<Model>.yaml over the model defaults
    device: str = "auto"
    data_dir: str | None = None
    cache_dir: Path | None = None
    name: str | None = None  # the leaderboard row (and results folder); default: the model
    # Where the run keeps its checkpoints (<root>/<dataset>/<label>/seed-<seed>-<key>/) while it
    # trains, so that a killed run can continue; None: a temporary folder, removed at the end.
    checkpoint_root: Path | None = None
    resume: bool = False  # continue from the run's last checkpoint, if one is there
    concurrent_runs: int = 1  # runs sharing this machine's cores (the default thread count)

    @property
    def label(self) -> str:
        """The name the run is stored and ranked under."""
        return self.name or self.model


@dataclass
class PreparedRun:
    """A request resolved against the registry, the config tree and the data directories."""

    request: RunRequest
    spec: registry.ModelSpec
    config_dict: dict[str, Any]
    data_name: str  # the RecBole dataset (folder and file prefix) the files come from
    data_path: Path
    data_source: str
    known_keys: set[str]


def resolve_device(device: str) -> Any:
    import torch

    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise BenchError(
            f"--device {device!r} is not a device (auto, cpu, cuda or cuda:N)"
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"--device {device} requested but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BenchError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif resolved.type != "cpu":
        raise BenchError(f"--device {device!r} is not supported (auto, cpu, cuda or cuda:N)")
    return resolved


def model_defaults_file(spec: registry.ModelSpec) -> Path | None:
    """``configs/models/<Model>.yaml``, else a ``<Model>.yaml`` beside a third-party class."""
    path = configs.model_file(spec.name)
    if path is not None:
        return path
    beside = Path(sys.modules[spec.cls.__module__].__file__ or "").parent / f"{spec.name}.yaml"
    return beside if beside.is_file() else None


def check_settings(settings: dict[str, Any], runs: list[PreparedRun]) -> None:
    """Every ``--set`` key must be known to RecBole or to the config of at least one model run."""
    known = set().union(*(run.known_keys for run in runs)) if runs else set()
    models = ", ".join(sorted({run.spec.name for run in runs}))
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise BenchError(f"unknown setting {key!r} (not used by RecBole or {models}){hint}")


def prepare(request: RunRequest) -> PreparedRun:
    """Resolve and check everything that can be checked before training starts."""
    try:
        spec = registry.get(request.model)
    except registry.UnknownModelError as exc:
        raise BenchError(str(exc)) from exc
    has_config = configs.has_dataset_config(request.dataset)
    found = None
    if not has_config:  # a user's own data folder runs under the default protocol
        try:
            found = locate(request.dataset, request.data_dir)
        except BenchError:
            found = None
    dataset_keys, harness = configs.dataset_settings(request.dataset, has_data=found is not None)
    # A protocol variant (ml-1m-strong) reads the files of another dataset (ml-1m).
    data_name = str(harness.get("data", request.dataset))
    layers: list[dict[str, Any]] = [configs.load_yaml(configs.defaults_file()), dataset_keys]
    model_path = model_defaults_file(spec)
    if model_path is not None:
        model_keys = configs.load_yaml(model_path)
        clashing = sorted(set(model_keys) & configs.PROTOCOL_KEYS)
        if clashing:
            raise BenchError(
                f"{model_path} sets protocol key(s) {', '.join(clashing)}; "
                "those belong to the dataset config"
            )
        layers.append(model_keys)
    if request.tuned:
        tuned = configs.tuned_file(request.dataset, spec.name)
        if not tuned.is_file():
            raise BenchError(
                f"--tuned: no {tuned} for {spec.name} on {request.dataset}; run bench tune first"
            )
        layers.append(configs.load_yaml(tuned))
    if request.quick:
        layers.append(configs.load_yaml(configs.quick_file()))
    layers.extend(configs.load_yaml(path) for path in request.config_files)

    known = configs.recbole_known_keys(spec.name)
    for layer in layers:
        known |= set(layer)

    config_dict: dict[str, Any] = {}
    for layer in layers:
        config_dict.update(layer)
    config_dict.update(request.settings)

    device = resolve_device(request.device)
    config_dict.update(
        seed=request.seed,
        device=str(device),
        use_gpu=device.type == "cuda",
        gpu_id="" if device.type == "cpu" else str(device.index or 0),
    )
    if int(config_dict.get("epochs", 1)) < 1:
        raise BenchError(f"epochs must be at least 1, got {config_dict['epochs']}")
    bound_pretraining(config_dict, request.settings)

    location = found or locate(data_name, request.data_dir, harness.get("how_to_get", ""))
    inter = location.folder(data_name) / f"{data_name}.inter"
    load_col = (config_dict.get("load_col") or {}).get("inter")
    required = (
        list(load_col)
        if load_col
        else [
            config_dict.get("USER_ID_FIELD", "user_id"),
            config_dict.get("ITEM_ID_FIELD", "item_id"),
        ]
    )
    check_atomic_header(inter, required)
    if config_dict.get("heldout_users") and spec.family == "sequential":
        raise BenchError(
            f"{request.dataset} holds out whole users (strong generalization), which needs a "
            f"general model; {spec.name} is sequential"
        )
    return PreparedRun(
        request, spec, config_dict, data_name, location.data_path, location.source, known
    )


def bound_pretraining(config_dict: dict[str, Any], settings: dict[str, Any]) -> None:
    """``--epochs N`` (or ``--set epochs=N``) bounds every stage of a two-stage model:
    fine-tuning gets N epochs and pre-training min(N, pretrain_epochs), unless
    ``pretrain_epochs`` is set explicitly too."""
    if "epochs" in settings and "pretrain_epochs" in config_dict:
        if "pretrain_epochs" not in settings:
            epochs = int(settings["epochs"])
            config_dict["pretrain_epochs"] = min(epochs, int(config_dict["pretrain_epochs"]))


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
    request = prepared.request
    if request.checkpoint_root is None:
        return None
    return (
        Path(request.checkpoint_root)
        / request.dataset
        / request.label
        / f"seed-{request.seed}-{run_key(prepared)}"
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


def resume_settings(prepared: PreparedRun) -> dict[str, Any]:
    """What ``--resume`` compares an existing result's config with: the settings a run computes
    with, and its training budget (a run cut off by a smaller one is run again)."""
    config = prepared.config_dict
    wanted = {k: v for k, v in config.items() if k not in _PLACEMENT_KEYS}
    wanted["time_budget_s"] = config.get("time_budget_s") or 0
    return wanted


def config_hash(config: dict[str, Any]) -> str:
    """Hash of what a run computes: the resolved config without seed and placement keys."""
    relevant = {k: v for k, v in config.items() if k not in _PLACEMENT_KEYS}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _eval_users(loader: Any) -> int:
    dataset = loader._dataset
    return len(set(dataset.inter_feat[dataset.uid_field].tolist()))


def _metrics(result: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in (result or {}).items()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def execute(
    prepared: PreparedRun,
    epoch_callback: EpochCallback | None = None,
    command: str | None = None,
    train_epoch_hook: TrainEpochHook | None = None,
) -> dict[str, Any]:
    """Train and evaluate one prepared run. Returns a result dict with status ``ok``.

    Exceptions from RecBole or the model propagate; :func:`run_safely` records them.
    """
    import torch
    from recbole.config import Config
    from recbole.utils import init_seed

    request = prepared.request
    started = _now()
    kept_folder = checkpoint_folder(prepared)
    if kept_folder is None:
        checkpoint_dir = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    else:
        checkpoint_dir = kept_folder
        if not request.resume:  # a fresh run never continues from an old one's state
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stop_reason = None
    try:
        t0 = time.perf_counter()
        config_dict = dict(prepared.config_dict)
        config_dict.update(data_path=str(prepared.data_path), checkpoint_dir=str(checkpoint_dir))
        # PyTorch's default pool (a thread per core) oversubscribes a CPU that other runs share.
        config_dict["threads"] = int(config_dict.get("threads") or 0) or default_threads(
            request.concurrent_runs
        )
        config = Config(
            model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
        )
        torch.set_num_threads(int(config["threads"]))
        init_seed(config["seed"], config["reproducibility"])
        try:
            dataset, cached = load_dataset(config, request.cache_dir)
        except (ValueError, KeyError, IndexError) as exc:
            folder = prepared.data_path / prepared.data_name
            raise BenchError(f"malformed data in {folder}: {type(exc).__name__}: {exc}") from exc
        counts = {
            "users": int(dataset.user_num - 1),  # RecBole counts the padding id
            "items": int(dataset.item_num - 1),
            "interactions": int(dataset.inter_num),
        }
        prepared_data = prepare_data(config, dataset)
        train_data, valid_data, test_data = prepared_data
        data_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        train_memory = PeakMemory(config["device"]).start()
        pretrain_records: list = []
        # What the run was asked for, kept over what the fine-tuning stage is configured with:
        # --resume compares a result's config with the next ask.
        asked = {"time_budget_s": float(config["time_budget_s"] or 0)}
        budget = asked["time_budget_s"]
        if needs_pretraining(config):
            asked["train_stage"] = config["train_stage"]
            pretrained, pretrain_records = pretrain(
                config,
                prepared.spec.cls,
                train_data,
                prepared_data.model_dataset,
                budget / 2,
                checkpoint_dir,
                resume=request.resume,
            )
            config_dict.update(train_stage="finetune", pre_model_path=str(pretrained))
            if budget:  # fine-tuning gets what pre-training left of the run's budget
                spent = time.perf_counter() - t1
                config_dict["time_budget_s"] = max(budget - spent, 1e-6)
            config = Config(
                model=prepared.spec.cls, dataset=prepared.data_name, config_dict=config_dict
            )
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = prepared.spec.cls(config, prepared_data.model_dataset).to(config["device"])
        if prepared_data.fold_in is not None:
            fold_in(model, prepared_data.fold_in)
        trainer = recording_trainer(config, model, epoch_callback, train_epoch_hook)
        trainer.saved_model_file = str(checkpoint_dir / "best.pth")
        trainer.last_checkpoint = checkpoint_dir / "last.pth"
        resumed_from = None
        if request.resume and trainer.last_checkpoint.is_file():
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
        stop_reason = "time_budget" if stopped_by_budget else trainer.stop_reason
        train_seconds = time.perf_counter() - t1
        memory = {"train": train_memory.stop()}  # validations included
        has_checkpoint = Path(trainer.saved_model_file).exists()
        t2 = time.perf_counter()
        test_memory = PeakMemory(config["device"]).start()
        test_result = trainer.evaluate(test_data, load_best_model=has_checkpoint)
        memory["test"] = test_memory.stop()
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
    resolved = {**_jsonable(dict(config.final_config_dict)), **asked}
    return {
        "schema": RESULT_SCHEMA,
        "status": "ok",
        "dataset": request.dataset,
        "model": request.name or prepared.spec.name,
        "model_class": prepared.spec.name,
        "family": prepared.spec.family,
        "source": prepared.spec.source,
        "seed": request.seed,
        "quick": request.quick,
        "config_hash": config_hash(resolved),
        "valid_metric": str(config["valid_metric"]).lower(),
        "best_epoch": best_epoch,
        "stopped_by_budget": stopped_by_budget,
        "stop_reason": stop_reason,
        "best_valid_score": None if best_valid_score is None else float(best_valid_score),
        "valid": _metrics(best_valid_result),
        "test": _metrics(test_result),
        "epochs": [asdict(r) for r in records],
        "pretrain_epochs": [asdict(r) for r in pretrain_records],
        "timing": {
            "data_seconds": data_seconds,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "total_seconds": data_seconds + train_seconds + eval_seconds,
            # A resumed run: the epoch this sitting began with and the training time before it.
            "resumed_from_epoch": resumed_from,
            "earlier_train_seconds": trainer.elapsed_before,
        },
        # Peak memory of training (validations included) and of the test pass: bench.memory.
        "memory": memory,
        "data": {
            "path": str(prepared.data_path / prepared.data_name),
            "sha256": fingerprint(prepared.data_path / prepared.data_name),
            "source": prepared.data_source,
            "cached": cached,
            **counts,
            "train_samples": len(train_data._dataset),
            "valid_users": _eval_users(valid_data),
            "test_users": _eval_users(test_data),
        },
        "config": resolved,
        PER_USER_KEY: per_user,
        "environment": environment(config["device"]),
        "command": command,
        "started_at": started,
        "finished_at": _now(),
    }


def failed_result(request: RunRequest, exc: BaseException, command: str | None) -> dict[str, Any]:
    return {
        "schema": RESULT_SCHEMA,
        "status": "failed",
        "dataset": request.dataset,
        "model": request.label,
        "model_class": request.model,
        "seed": request.seed,
        "quick": request.quick,
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        },
        "command": command,
        "finished_at": _now(),
    }


def run_safely(
    prepared: PreparedRun,
    epoch_callback: EpochCallback | None = None,
    command: str | None = None,
    train_epoch_hook: TrainEpochHook | None = None,
) -> dict[str, Any]:
    """:func:`execute`, with any exception turned into a ``failed`` result."""
    with warnings.catch_warnings():
        # RecBole 1.2.1 on current PyTorch warns on every run about APIs it uses; not actionable.
        warnings.filterwarnings("ignore", category=FutureWarning, module="recbole")
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        try:
            return execute(prepared, epoch_callback, command, train_epoch_hook)
        except (KeyboardInterrupt, BenchError):
            raise
        except Exception as exc:  # one model's failure must not stop the others
            return failed_result(prepared.request, exc, command)
