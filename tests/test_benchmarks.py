"""Benchmark scripts' reports, from synthetic records (no training): the ContrastVAE side by side
and the run-cost table."""

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


def _run_result(model: str, seed: int, epochs: list[dict], device: str = "cpu") -> dict:
    return {
        "dataset": "d", "model": model, "seed": seed, "status": "ok",
        "stopped_by_budget": any(e.get("cut_after_batches") for e in epochs),
        "epochs": epochs,
        "timing": {"data_seconds": 2.0, "train_seconds": 9.0, "eval_seconds": 3.0 + seed},
        "memory": {"train": {"peak_mib": 100.0 + seed}, "test": {"peak_mib": 80.0}},
        "environment": {"device": device, "device_name": "H", "cpu_count": 2},
    }  # fmt: skip


def test_run_costs_are_read_from_the_runs_records(tmp_path):
    from bench.results import write_result

    path = ROOT / "benchmarks" / "run_costs.py"
    spec = importlib.util.spec_from_file_location("run_costs", path)
    run_costs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_costs)

    def epoch(n, seconds, cut=None, valid=1.0):
        return {"epoch": n, "train_seconds": seconds, "valid_score": 0.1,
                "valid_seconds": valid, "cut_after_batches": cut}  # fmt: skip

    # Seed 0: two whole epochs (4 s, 6 s) and one cut by the budget; seed 1: one whole (5 s).
    write_result(tmp_path, _run_result("A", 0, [epoch(0, 4.0), epoch(1, 6.0), epoch(2, 0.5, 3)]))
    write_result(tmp_path, _run_result("A", 1, [epoch(0, 5.0, valid=3.0)]))
    write_result(tmp_path, _run_result("B", 0, [epoch(0, 0.2, 1)]))  # only a cut epoch
    write_result(tmp_path, _run_result("A", 2, [epoch(0, 1.0)], device="cuda"))
    failed = {"dataset": "d", "model": "C", "seed": 0, "status": "failed", "error": {}}
    write_result(tmp_path, failed)

    assert (
        run_costs.main(["--results", str(tmp_path), "--dataset", "d", "--note", "2 at once"]) == 0
    )
    report = json.loads((tmp_path / "perf" / "run_costs_d.json").read_text())
    rows = {(r["model"], r["device"]): r for r in report["rows"]}
    assert set(rows) == {("A", "cpu (2 cores)"), ("B", "cpu (2 cores)"), ("A", "cuda (H)")}
    a = rows[("A", "cpu (2 cores)")]
    assert a["seeds"] == 2 and a["epochs"] == 2.0
    assert a["epoch_seconds"] == 5.0 and a["epoch_cut"] is False  # the cut 0.5 s left out
    assert a["valid_seconds"] == 1.0 and a["test_seconds"] == 3.5 and a["train_seconds"] == 9.0
    assert a["train_peak_mib"] == 101.0 and a["test_peak_mib"] == 80.0
    assert a["budget_limited"] == 1
    b = rows[("B", "cpu (2 cores)")]
    assert b["epoch_seconds"] == 0.2 and b["epoch_cut"] is True
    text = (tmp_path / "perf" / "run_costs_d.md").read_text()
    assert "| B | cpu (2 cores) | 1 | 1.0 | 0.2 \u2020 | 9.0 |" in text
    assert "Runs: 2 at once" in text and "'2 at once'" in text
    assert run_costs.main(["--results", str(tmp_path), "--dataset", "none"]) == 2
