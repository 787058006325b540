"""benchmarks/model_speed.py's measuring core, and compat.apply_only (a subset of the fixes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import model_speed
from recbole_ext import compat
from tests.helpers import ROOT, TINY


def _job(data_dir, tmp_path, model: str, **extra) -> dict:
    return {
        "dataset": "tiny",
        "model": model,
        "device": "cpu",
        "data_dir": str(data_dir),
        "settings": {**TINY, "train_batch_size": 16},
        "max_steps": 2,
        "warmup_steps": 1,
        "threads": 0,
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }


def test_harness_measurement_has_every_field(tiny_sequences, tmp_path):
    result = model_speed.measure_harness(_job(tiny_sequences, tmp_path, "SASRec"))
    train, evaluation = result["train"], result["eval"]
    assert result["family"] == "sequential" and result["params"] > 0
    assert train["steps"] == 2 and train["steps_per_epoch"] > 2 and train["projected"]
    assert train["epoch_seconds"] == pytest.approx(
        train["seconds_per_step"] * train["steps_per_epoch"]
    )
    assert evaluation["users"] == 40 and evaluation["seconds"] > 0
    for phase in (train, evaluation):
        assert phase["memory"]["peak_rss_mib"] > 0
        assert phase["cpu"]["cpu_seconds"] > 0
        # the user/kernel split is apportioned from ticks: a tiny phase may put it all on one side
        assert phase["cpu"]["user_seconds"] >= 0 and phase["cpu"]["system_seconds"] >= 0
        assert phase["cpu"]["minor_faults"] >= 0
    assert result["malloc"] in ("kept", "environment", "system")  # as bench run would set it
    # the second build reads the dataset cache the first one wrote
    again = model_speed.measure_harness(_job(tiny_sequences, tmp_path, "SASRec", max_steps=0))
    assert again["data"]["cached"] and not again["train"]["projected"]
    assert again["train"]["steps"] == again["train"]["steps_per_epoch"]


def test_one_pass_models_run_their_whole_epoch(tiny_sequences, tmp_path):
    result = model_speed.measure_harness(_job(tiny_sequences, tmp_path, "Pop", max_steps=1))
    train = result["train"]
    assert train["one_pass_model"] and not train["projected"] and train["warmup_steps"] == 0
    assert train["steps"] == train["steps_per_epoch"] > 1


def test_report_renders_failures_and_projection():
    ok = {
        "model": "SASRec",
        "status": "ok",
        "family": "sequential",
        "params": 10,
        "build_seconds": 0.0,
        "notes": [],
        "train": {
            "steps": 2,
            "steps_per_epoch": 10,
            "seconds_per_step": 0.5,
            "epoch_seconds": 5.0,
            "projected": True,
            "memory": {"peak_rss_mib": 100.0},
        },
        "eval": {"seconds": 1.0, "memory": {"peak_rss_mib": 120.0}},
    }
    failed = {"model": "X", "status": "timed out", "error": "timed out after 5 s"}
    report = {
        "dataset": "tiny",
        "device": "cpu",
        "machine": {"cpu": "some CPU", "nproc": 2},
        "command": "python benchmarks/model_speed.py",
        "settings": {"max_steps": 2, "warmup_steps": 1, "threads": 1},
        "models": [ok, failed],
        "harness_vs_stock": None,
    }
    text = model_speed.markdown(report)
    assert "| SASRec |" in text and "5.00 P" in text
    assert "timed out: timed out after 5 s" in text


def test_apply_only_leaves_the_other_fixes_unapplied():
    # A fresh process: this one imported recbole_ext, which applies every fix.
    code = (
        "import sys, torch; sys.path.insert(0, '.');"
        "from benchmarks.model_speed import _compat_module;"
        "c = _compat_module(); c.apply_only(['numpy_aliases']);"
        "import numpy as np; from recbole.config import Config;"
        "from recbole.trainer import trainer as t; import recbole.model.sequential_recommender;"
        "print(np.float is float, Config.compatibility_settings is c._compatibility_settings,"
        " Config._load_cmd_line.__module__, t.get_tensorboard.__module__,"
        " torch.is_anomaly_enabled(), 'recbole_ext' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [
        "True",
        "True",
        "recbole.config.configurator",  # the argv fix (in "config") not applied
        "recbole.utils.utils",  # nor the TensorBoard one
        "True",  # nor anomaly detection's
        "False",
    ]


def test_apply_only_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown compat fix"):
        compat.apply_only(["no_such_fix"])
    assert set(model_speed.STOCK_FIXES) <= set(compat.FIXES)
