"""Leaderboards built from per-run results."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import leaderboard
from bench.results import write_result


def _result(model, seed, ndcg, config_hash="a", status="ok"):
    base = {"dataset": "d", "model": model, "seed": seed, "status": status}
    if status != "ok":
        return {**base, "error": {"type": "RuntimeError", "message": "boom"}}
    return {
        **base,
        "family": "sequential",
        "quick": False,
        "config_hash": config_hash,
        "valid_metric": "ndcg@10",
        "best_epoch": seed + 1,
        "test": {"ndcg@10": ndcg, "hit@10": 2 * ndcg},
        "timing": {"train_seconds": 10.0},
    }


def test_mean_over_seeds_best_marked_and_failures_counted(tmp_path):
    for r in [
        _result("A", 0, 0.10),
        _result("A", 1, 0.20),
        _result("B", 0, 0.30),
        _result("C", 0, 0.0, status="failed"),
    ]:
        write_result(tmp_path, r)
    csv_path, md_path = leaderboard.write(tmp_path, "d")
    table = pd.read_csv(csv_path)
    assert list(table["model"]) == ["B", "A", "C"]
    row_a = table.set_index("model").loc["A"]
    assert row_a["seeds"] == 2 and row_a["test_ndcg@10"] == pytest.approx(0.15)
    assert row_a["best_epoch"] == pytest.approx(1.5)
    assert table.set_index("model").loc["C", "failed"] == 1
    md = md_path.read_text()
    assert "| B | sequential | 1 | **0.3000** | **0.6000** |" in md
    assert "C: 1 failed run(s)." in md


def test_rows_mixing_configs_are_flagged(tmp_path):
    write_result(tmp_path, _result("A", 0, 0.1, config_hash="x"))
    write_result(tmp_path, _result("A", 1, 0.2, config_hash="y"))
    _, md_path = leaderboard.write(tmp_path, "d")
    assert "Seeds of A ran with different configs" in md_path.read_text()


def test_no_results_writes_nothing(tmp_path):
    assert leaderboard.write(tmp_path, "d") is None
    assert not (tmp_path / "leaderboard").exists()
