"""Per-run result files: what ``--resume`` counts as already done."""

from __future__ import annotations

import json

import pytest

from bench import contract

CONFIG = {
    "stopping_step": 10,
    "learning_rate": 0.001,
    "metrics": ["NDCG", "Hit"],
    "time_budget_s": 240,
    # As RecBole resolves them: a string mode becomes one mode per split, an unset negative
    # sampling becomes a dict of "none".
    "eval_args": {"split": {"LS": "valid_and_test"}, "mode": {"valid": "full", "test": "full"}},
    "train_neg_sample_args": {"distribution": "none", "sample_num": "none"},
}
WANTED = {
    "stopping_step": 10,
    "learning_rate": 1e-3,
    "metrics": ["NDCG", "Hit"],
    "time_budget_s": 240,
    "eval_args": {"split": {"LS": "valid_and_test"}, "mode": "full"},
    "train_neg_sample_args": None,
}


def result(stopped_by_budget: bool, **config) -> contract.RunResult:
    return contract.RunResult(
        status="ok",
        dataset="tiny",
        model="Pop",
        seed=0,
        stop_reason="time_budget" if stopped_by_budget else "early_stopping",
        config={**CONFIG, **config},
    )


def test_a_result_answers_a_run_with_the_same_settings_as_recbole_resolved_them():
    assert contract.answers(result(False), WANTED)


@pytest.mark.parametrize(
    "changed",
    [{"stopping_step": 200}, {"learning_rate": 0.002}, {"metrics": ["NDCG"]}],
)
def test_a_changed_setting_runs_again(changed):
    assert not contract.answers(result(False), {**WANTED, **changed})


@pytest.mark.parametrize(
    ("budget", "reused"),
    [(0, False), (600, False), (240, True), (100, True)],
)
def test_a_run_its_budget_stopped_stands_only_for_a_budget_no_larger(budget, reused):
    assert contract.answers(result(True), {**WANTED, "time_budget_s": budget}) is reused


def test_a_run_that_stopped_early_stands_for_any_budget():
    assert contract.answers(result(False), {**WANTED, "time_budget_s": 0})


def test_only_a_successful_result_file_counts(tmp_path):
    path = contract.run_path(tmp_path, "tiny", "Pop", 0)
    path.parent.mkdir(parents=True)
    assert not contract.completed(tmp_path, "tiny", "Pop", 0)
    record = {"dataset": "tiny", "model": "Pop", "seed": 0}
    path.write_text(json.dumps({**record, "status": "failed"}))
    assert not contract.completed(tmp_path, "tiny", "Pop", 0)
    path.write_text(json.dumps({**record, "status": "ok", "stopped_by_budget": False}))
    assert contract.completed(tmp_path, "tiny", "Pop", 0)
    path.write_text("{not json")
    assert not contract.completed(tmp_path, "tiny", "Pop", 0)


def test_a_runs_result_lies_in_its_datasets_runs_dir(tmp_path):
    # run_costs names this folder as its source; the writer and the readers must agree on it.
    path = contract.run_path(tmp_path, "tiny", "Pop", 0)
    assert path.parent.parent == contract.runs_dir(tmp_path, "tiny")
    assert contract.runs_dir(tmp_path, "tiny").parent == contract.runs_dir(tmp_path)
