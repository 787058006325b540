"""The ContrastVAE side-by-side benchmark's report (no training: synthetic epochs)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def side_by_side():
    path = ROOT / "benchmarks" / "contrastvae_side_by_side.py"
    spec = importlib.util.spec_from_file_location("side_by_side", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _epoch(n: int, train_s: float, valid: float, test: float) -> dict:
    metrics = {"hit@10": 2 * test, "ndcg@10": test, "hit@20": 3 * test, "ndcg@20": 1.2 * test}
    return {
        "epoch": n, "loss": 1.0, "train_s": train_s, "valid_s": train_s / 2,
        "test_s": train_s / 2, "train_peak_mib": 100.0 * n, "eval_peak_mib": 50.0,
        "valid": {**metrics, "ndcg@10": valid}, "test": metrics,
    }  # fmt: skip


def test_summary_picks_best_validation_epoch_and_ratios(side_by_side, tmp_path):
    report = {
        "dataset": "amazon-beauty",
        "epochs": 3,
        "machine": {"device": "cuda", "device_name": "GPU"},
        "measured_at": "now",
        "command": "python benchmarks/contrastvae_side_by_side.py",
        "official_commit": "abc",
        "official_command": "python main.py",
        "sides": {
            "ours": [
                _epoch(1, 1.0, 0.01, 0.02), _epoch(2, 1.0, 0.03, 0.04), _epoch(3, 3.0, 0.02, 0.1)
            ],
            "official": [_epoch(1, 4.0, 0.02, 0.03), _epoch(2, 4.0, 0.01, 0.05)],
        },
        "errors": {"official": "stopped at --side-time-limit 1 s"},
    }  # fmt: skip
    summary = side_by_side.summary(report)
    assert summary["ours"]["best_epoch"] == 2 and summary["ours"]["best_test"]["ndcg@10"] == 0.04
    assert summary["official"]["best_epoch"] == 1
    assert summary["ratio"]["train_s"] == pytest.approx(1.0 / 4.0)
    assert summary["ours"]["train_peak_mib"] == 300.0

    report["summary"] = summary
    text = side_by_side.markdown(report)
    rows = [line for line in text.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 1 and rows[0].count("|") == 20  # the official side has no epoch 3
    assert "official: stopped at --side-time-limit" in text

    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(report))
    side_by_side.main(["--from-json", str(saved), "--out", str(tmp_path)])
    assert (tmp_path / "contrastvae_side_by_side.md").read_text() == text
