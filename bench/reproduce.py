"""``bench reproduce RESULT.json``: run a stored result again from its own record and say
whether the metrics match.

The record holds what a run computed with: the dataset, the row name and the model class, the
seed, the resolved config (RecBole's keys and the harness's) and where the data was. The run is
rebuilt from that record alone, not from today's config files, so a default changed since does
not count as a difference. A run its time budget cut is replayed to the point the budget cut it
(the epochs it ran, the batches of its last one), not to a wall-clock cap that would fall
elsewhere. On the CPU the metrics must match exactly; on CUDA (whose kernels need not be
bitwise deterministic) within a tolerance.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.configs import ConfigTree
from bench.contract import PLACEMENT_KEYS, RunOptions, RunResult, read_result
from bench.datasets import DataLocation, check_atomic_header, fingerprint
from bench.errors import BenchError
from bench.preflight import PreparedRun, model_spec, resolve_device
from bench.runner import Replay, execute, recbole_warnings_silenced
from recbole_ext.data import HarnessSettings
from recbole_ext.training import EpochRecord, RecordedStop

# Keys RecBole's Config derives when it resolves a config (from the model class, the metrics,
# the device, the data folder): fed back in, they would override what it derives, or break it
# (an enum stored as its name; local_rank would start distributed training).
_DERIVED_KEYS = frozenset(
    {
        "MODEL_TYPE",
        "MODEL_INPUT_TYPE",
        "eval_type",
        "valid_metric_bigger",
        "single_spec",
        "local_rank",
        "device",
        "gpu_id",
        "use_gpu",
        "data_path",
        "checkpoint_dir",
        "dataset",
        "model",
        "valid_neg_sample_args",
        "test_neg_sample_args",
        "config_files",
        "pre_model_path",
    }
)
# The absolute tolerance of a comparison on CUDA.
CUDA_TOLERANCE = 1e-6


@dataclass
class Reproduction:
    """A stored result and its re-run: the metrics that differ (phase, metric, recorded,
    reproduced) beyond ``tolerance`` (0: exactly), and what the reader should know."""

    recorded: RunResult
    again: RunResult
    tolerance: float
    differences: list[tuple[str, str, float | None, float | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The first epoch whose training loss or validation score differs, said in words.
    first_divergence: str | None = None

    @property
    def matched(self) -> bool:
        return self.again.ok and not self.differences


def _record_config(result: RunResult) -> dict[str, Any]:
    """The recorded config as a RecBole ``config_dict`` (derived keys out)."""
    config = {k: v for k, v in result.config.items() if k not in _DERIVED_KEYS}
    sampling = config.get("train_neg_sample_args")
    if isinstance(sampling, dict) and sampling.get("distribution") == "none":
        config["train_neg_sample_args"] = None  # RecBole's resolved form of "no sampling"
    return config


def prepared_from_record(
    result: RunResult,
    data_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> PreparedRun:
    """The run a stored result describes, ready for :func:`bench.runner.execute`; the data
    from ``data_dir`` if given, else from where the run read it."""
    if not result.ok:
        raise BenchError(f"{result.model} seed {result.seed} failed: nothing to reproduce")
    if result.data is None or not result.data.path:
        raise BenchError(f"{result.model} seed {result.seed}: the record names no data folder")
    spec = model_spec(result.model_class or result.model)
    recorded = Path(result.data.path)
    data_name = recorded.name
    location = DataLocation(
        (Path(data_dir) if data_dir is not None else recorded.parent).resolve(),
        "--data-dir" if data_dir is not None else str(result.data.source),
    )
    inter = location.folder(data_name) / f"{data_name}.inter"
    if not inter.is_file():
        raise BenchError(f"no {inter}: pass --data-dir, the folder holding {data_name}/")
    check_atomic_header(inter, [])
    config = _record_config(result)
    resolved = resolve_device(device)
    config.update(
        seed=result.seed,
        device=str(resolved),
        use_gpu=resolved.type == "cuda",
        gpu_id="" if resolved.type == "cpu" else str(resolved.index or 0),
    )
    try:
        settings = HarnessSettings.from_mapping(config)
    except ValueError as exc:
        raise BenchError(f"the record's harness settings: {exc}") from exc
    options = RunOptions(
        dataset=result.dataset,
        model=spec.name,
        seed=result.seed,
        quick=result.quick,
        device=device,
        data_dir=str(location.data_path),
        cache_dir=cache_dir,
        name=result.model,
        config_tree=ConfigTree.default(),
    )
    return PreparedRun(
        options,
        spec,
        config,
        settings,
        data_name,
        location.data_path,
        location.source,
        set(config),
    )


def _stop(records: list[EpochRecord]) -> RecordedStop:
    last = records[-1].cut_after_batches if records else None
    return RecordedStop(len(records), last)


def recorded_stops(result: RunResult) -> Replay | None:
    """Where the recorded run's time budget ended its stages; None when it cut neither."""
    fit = _stop(result.epochs) if result.stopped_by_budget else None
    pretrain = None
    records = result.pretrain_epochs
    if records:
        limit = result.config.get("pretrain_epochs")
        short = limit is not None and len(records) < int(limit)
        if short or records[-1].cut_after_batches is not None:
            pretrain = _stop(records)
    return Replay(pretrain, fit) if pretrain or fit else None


def _same(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= tolerance


def compare(
    recorded: RunResult, again: RunResult, tolerance: float
) -> list[tuple[str, str, float | None, float | None]]:
    """(phase, metric, recorded, reproduced) of every test and validation metric that differs
    by more than ``tolerance`` (or is missing on one side)."""
    differences = []
    for phase, mine, theirs in (
        ("test", recorded.test, again.test),
        ("valid", recorded.valid, again.valid),
    ):
        for metric in sorted(mine.keys() | theirs.keys()):
            a, b = mine.get(metric), theirs.get(metric)
            if not _same(a, b, tolerance):
                differences.append((phase, metric, a, b))
    return differences


def first_divergence(recorded: RunResult, again: RunResult, tolerance: float) -> str | None:
    """Where two runs' epoch records part first (pre-training, then training): the epoch and
    the value whose recorded and reproduced figures differ by more than ``tolerance``, or
    None when every epoch agrees. Says whether a difference in the metrics grew from the first
    step (another order of float sums) or appeared late (one borderline decision)."""
    for stage, mine, theirs in (
        ("pre-training", recorded.pretrain_epochs, again.pretrain_epochs),
        ("training", recorded.epochs, again.epochs),
    ):
        for a, b in zip(mine, theirs, strict=False):
            for what, x, y in (
                ("training loss", a.train_loss, b.train_loss),
                ("validation score", a.valid_score, b.valid_score),
            ):
                if not _same(x, y, tolerance):
                    return f"{stage} epoch {a.epoch}: {what} recorded {x!r}, reproduced {y!r}"
        if len(mine) != len(theirs):
            return f"{stage}: {len(mine)} epochs recorded, {len(theirs)} reproduced"
    return None


def _config_differences(recorded: RunResult, again: RunResult) -> list[str]:
    """The keys of what a run computes (placement keys aside) whose values differ."""
    mine, theirs = recorded.config, again.config
    keys = sorted((mine.keys() | theirs.keys()) - PLACEMENT_KEYS)
    return [k for k in keys if mine.get(k, "<unset>") != theirs.get(k, "<unset>")]


def reproduce(
    path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    tolerance: float | None = None,
) -> Reproduction:
    """Run the result at ``path`` again from its record and compare its metrics."""
    recorded = read_result(path)
    if recorded is None:
        raise BenchError(f"no result at {path}")
    prepared = prepared_from_record(recorded, data_dir, device)
    notes = []
    replay = recorded_stops(recorded)
    if replay is not None:
        # The clock would cut the re-run elsewhere: it stops where the record says instead.
        prepared.settings = dataclasses.replace(prepared.settings, time_budget_s=0.0)
        where = [
            f"{stage} stopped before epoch {stop.epochs}"
            + (f", its last epoch after {stop.last_batches} batches" if stop.last_batches else "")
            for stage, stop in (("pre-training", replay.pretrain), ("training", replay.fit))
            if stop is not None
        ]
        notes.append(f"replayed the recorded time-budget cut: {'; '.join(where)}")
    folder = prepared.data_path / prepared.data_name
    if recorded.data is not None and recorded.data.sha256 != fingerprint(folder):
        notes.append(f"the data files in {folder} differ from the ones the run read (sha256)")
    with recbole_warnings_silenced():
        again = execute(prepared, command=f"bench reproduce {path}", replay=replay)
    then, now = (r.environment.device_name if r.environment else None for r in (recorded, again))
    if then and now and then != now:
        notes.append(
            f"recorded on {then}, run again on {now}: kernels for another processor or "
            "instruction set may sum floats in another order, so metrics can differ in their "
            "last digits (--tolerance)"
        )
    if again.config_hash != recorded.config_hash:
        keys = ", ".join(_config_differences(recorded, again))
        notes.append(
            f"config hash {again.config_hash}, recorded {recorded.config_hash}: the configs "
            f"differ in {keys or 'nothing but key order'} (a key the harness now writes into "
            "every config is unset in an older record)"
        )
    if tolerance is None:
        tolerance = CUDA_TOLERANCE if prepared.config_dict["use_gpu"] else 0.0
    return Reproduction(
        recorded,
        again,
        tolerance,
        compare(recorded, again, tolerance),
        notes,
        first_divergence(recorded, again, tolerance),
    )
