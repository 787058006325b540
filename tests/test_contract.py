"""The run contract: typed results, schema migration, the config hash, harness settings."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import contract
from bench.errors import BenchError
from recbole_ext.data import HarnessSettings, HeldOut
from recbole_ext.training import EpochRecord
from tests.helpers import ROOT


def _committed_results() -> list[Path]:
    """The results git tracks: a run a developer just made in this checkout (``bench run`` writes
    into results/runs) is not a committed one."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", ":(glob)results/runs/*/*/seed-*.json"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return sorted(ROOT / name for name in listed.decode().split("\0") if name)


COMMITTED = _committed_results()


def test_every_committed_result_loads_and_keeps_its_config_hash():
    """The 160-odd results in results/runs (schema 1) load through the migration, and the
    hash of each stored config is the hash stored beside it: no committed row turns
    mixed_config, and --resume does not run them again."""
    assert len(COMMITTED) > 100
    for path in COMMITTED:
        result = contract.read_result(path)
        assert result is not None and result.schema == contract.SCHEMA, path
        assert contract.config_hash(result.config) == result.config_hash, path
        assert result.stop_reason in contract.STOP_REASONS, path
        raw = json.loads(path.read_text())
        assert result.stopped_by_budget is raw["stopped_by_budget"], path
        assert result.code_version == raw["environment"]["git_commit"], path
        assert isinstance(result.epochs[0], EpochRecord) and result.data.sha256, path


@pytest.mark.parametrize(
    ("status", "stopped", "epochs", "limit", "reason"),
    [
        ("ok", True, 3, 300, "time_budget"),
        ("ok", False, 300, 300, "epoch_limit"),
        ("ok", False, 1, 1, "epoch_limit"),  # Pop, EASE: one epoch
        ("ok", False, 40, 300, "early_stopping"),
        ("failed", False, 0, 300, "failed"),
    ],
)
def test_schema_1_records_get_a_stop_reason(status, stopped, epochs, limit, reason):
    record = {
        "dataset": "d",
        "model": "M",
        "seed": 0,
        "status": status,
        "stopped_by_budget": stopped,
        "epochs": [{"epoch": e} for e in range(epochs)],
        "config": {"epochs": limit},
        "environment": {"git_commit": "abc"},
    }
    result = contract.parse_result(record)
    assert result.stop_reason == reason and result.stopped_by_budget is stopped
    assert result.code_version == "abc"


def test_a_stop_reason_a_schema_1_record_has_is_kept():
    record = {"dataset": "d", "model": "M", "seed": 0, "status": "ok", "schema": 1}
    record |= {"stopped_by_budget": False, "stop_reason": "early_stopping", "epochs": []}
    record |= {"config": {"epochs": 0}}  # inference alone would say epoch_limit
    assert contract.parse_result(record).stop_reason == "early_stopping"


def _result(**fields) -> contract.RunResult:
    base = dict(status="ok", dataset="d", model="M", seed=1, stop_reason="early_stopping")
    return contract.RunResult(**{**base, **fields})


def test_a_result_round_trips_through_its_file(tmp_path):
    result = _result(
        epochs=[EpochRecord(epoch=0, train_loss=1.5, loss_terms={"kl": 0.1}, valid_score=0.2)],
        timing=contract.Timing(train_seconds=2.0, resumed_from_epoch=None),
        memory=contract.Memory(train=contract.PhaseMemory(kind="cuda_allocated", peak_mib=3.0)),
        data=contract.DataInfo(path="/d/x", sha256={"x.inter": "ff"}, users=3),
        environment=contract.Environment(git_commit="c", packages={"torch": "2"}),
        config={"epochs": 5, "eval_args": {"mode": {"valid": "full"}}},
        code_version="c",
        per_user={"user_id": np.array(["a", "b"]), "ndcg@10": np.array([0.5, 0.0])},
    )
    path = contract.write_result(tmp_path, result)
    assert path == tmp_path / "runs" / "d" / "M" / "seed-1.json"
    again = contract.read_result(path)
    assert again == dataclasses.replace(result, per_user_file="seed-1.users.npz")
    assert json.loads(path.read_text())["schema"] == contract.SCHEMA
    assert "reserved_mib" not in path.read_text()  # a CPU-only key left out when unset
    per_user = contract.read_per_user(path)
    assert list(per_user["user_id"]) == ["a", "b"] and per_user["ndcg@10"][0] == 0.5
    # Rewritten without per-user values of its own: a stale file must not pair with it.
    contract.write_result(tmp_path, _result())
    assert contract.read_per_user(path) is None
    assert contract.read_result(path).per_user_file is None


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"schema": 9}, "unknown result schema 9"),
        ({"schema": 2, "status": "ok", "dataset": "d", "seed": 0}, "no model"),
        ({"schema": 2, "status": "ok", "dataset": "d", "model": "M", "seed": 0, "x": 1}, "x"),
        ({"status": "ok", "dataset": "d", "model": "M", "seed": 0, "timing": {"t": 1}}, "timing"),
        ({"schema": 2, "status": "ok", "dataset": "d", "model": "M", "seed": 0}, "stop_reason"),
    ],
)
def test_a_record_that_is_not_a_result_is_a_bench_error_naming_the_file(tmp_path, record, message):
    path = tmp_path / "seed-0.json"
    path.write_text(json.dumps(record))
    with pytest.raises(BenchError, match=f"malformed result {path}.*{message}"):
        contract.read_result(path)
    assert contract.read_result(tmp_path / "missing.json") is None


def test_the_hash_leaves_out_the_keys_it_always_left_out():
    """The key set of the config hash is today's: RecBole's placement keys, and the harness's
    time budget, thread count and checkpoint interval (declared by their fields: they change no
    result)."""
    assert HarnessSettings.placement_keys() == {"time_budget_s", "threads", "checkpoint_every_s"}
    assert contract.PLACEMENT_KEYS == {
        *("seed", "device", "gpu_id", "use_gpu", "checkpoint_dir", "data_path"),
        *("config_files", "show_progress", "worker", "local_rank", "single_spec", "state"),
        *("time_budget_s", "threads", "checkpoint_every_s", "pre_model_path"),
    }
    config = {"learning_rate": 0.1, "train_regime": "users", "bucket_by_length": True}
    placed = {**config, "seed": 3, "threads": 8, "time_budget_s": 60.0, "device": "cuda"}
    placed["checkpoint_every_s"] = 600.0
    assert contract.config_hash(placed) == contract.config_hash(config)
    assert contract.config_hash({**config, "bucket_by_length": False}) != contract.config_hash(
        config
    )


def test_harness_settings_parse_once_with_typed_defaults():
    parsed = HarnessSettings.from_mapping(
        {
            "train_regime": "users",
            "heldout_users": {"valid": 5, "test": 6},
            "time_budget_s": 30,
            "eval_user_limit": None,  # null: the default
            "learning_rate": 0.1,  # not the harness's
        }
    )
    assert parsed.train_regime == "users" and parsed.time_budget_s == 30.0
    assert parsed.heldout_users == HeldOut(valid=5, test=6)
    assert parsed.eval_user_limit == 0 and parsed.fast_evaluation is True
    assert HarnessSettings.from_mapping({}) == HarnessSettings()
    for bad, message in (
        ({"train_regime": "sessions"}, "train_regime must be one of"),
        ({"threads": -1}, "threads must be >= 0"),
        ({"heldout_users": {"valid": 5}}, "heldout_users must be a mapping"),
        ({"train_sample_limit": "many"}, "invalid literal"),
    ):
        with pytest.raises(ValueError, match=message):
            HarnessSettings.from_mapping(bad)
