"""Run plans: parsing, deadline budgets, and a small plan run end to end in worker processes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys

import pandas as pd
import pytest
import torch

from bench import configs, contract, executor, plans
from bench.errors import BenchError
from recbole_ext import run_state
from tests.helpers import ROOT, TINY


def write_plan(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_plan_expands_jobs_over_models_and_seeds(tmp_path):
    path = write_plan(
        tmp_path,
        """
defaults: {seeds: [0], budget_s: 50, set: {n_layers: 1, hidden_size: 8}}
jobs:
  - {dataset: tiny, models: [Pop, SASRec], seeds: [0, 1]}
  - {dataset: tiny, models: SASRec, name: SASRec-wide, set: {hidden_size: 16}, budget_s: 0}
""",
    )
    runs = plans.load_plan(path)
    # A job's `set:` adds to the defaults' (its own keys win); other keys replace.
    assert runs[0].settings == {"n_layers": 1, "hidden_size": 8}
    assert runs[-1].settings == {"n_layers": 1, "hidden_size": 16}
    assert [r.key for r in runs] == [
        "tiny__Pop__seed-0",
        "tiny__Pop__seed-1",
        "tiny__SASRec__seed-0",
        "tiny__SASRec__seed-1",
        "tiny__SASRec-wide__seed-0",
    ]
    assert runs[0].budget_s == 50 and runs[-1].budget_s == 0
    cmd = runs[-1].command(30, "cpu", tmp_path, None, resume=True)
    assert cmd[cmd.index("--name") + 1] == "SASRec-wide"
    assert "hidden_size=16" in cmd and "time_budget_s=30" in cmd and cmd[-1] == "--resume"


def test_a_job_of_all_models_runs_the_datasets_suite(tmp_path):
    path = write_plan(tmp_path, "jobs:\n  - {dataset: amazon-sports, models: all, seeds: [0, 1]}\n")
    runs = plans.load_plan(path)
    suite = configs.ConfigTree.default().suite("amazon-sports")
    assert [r.model for r in runs] == [m for m in suite for _ in (0, 1)] and len(suite) > 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobs: []", "non-empty 'jobs'"),
        ("jobs: [{dataset: tiny}]", "needs 'dataset' and 'models'"),
        ("jobs: [{dataset: tiny, models: [Pop], sed: 1}]", "unknown key(s) sed"),
        ("jobs: [{dataset: tiny, models: [Pop, BPR], name: x}]", "names a variant of several"),
        ("jobs: [{dataset: tiny, models: [Pop]}, {dataset: tiny, models: Pop}]", "listed twice"),
        ("jobs: [{dataset: tiny, models: [Pop]}]\nbaseline: {tiny: Pop}", "top-level key(s)"),
        ("jobs: [{dataset: tiny, models: [Pop], set: [1, 2]}]", "job 1's 'set' is not a mapping"),
        ("defaults: {set: 3}\njobs: [{dataset: tiny, models: [Pop]}]", "must be mappings"),
        ("defaults: [1]\njobs: [{dataset: tiny, models: [Pop]}]", "must be mappings"),
    ],
)
def test_malformed_plans_are_refused(tmp_path, text, message):
    with pytest.raises(BenchError, match="plan .*" + re.escape(message)):
        plans.load_plan(write_plan(tmp_path, text))


@pytest.mark.parametrize(
    ("baselines", "message"),
    [("[Pop]", "must map datasets"), ("{other: Pop}", "dataset(s) no job runs: other")],
)
def test_malformed_baselines_are_refused(tmp_path, baselines, message):
    path = write_plan(tmp_path, f"jobs: [{{dataset: tiny, models: [Pop]}}]\nbaselines: {baselines}")
    with pytest.raises(BenchError, match=re.escape(message)):
        plans.load_baselines(path)


def test_deadline_cuts_late_runs_budgets():
    assert plans.granted_budget(600, elapsed_s=0, deadline_s=0, reserve_s=100) == 600
    assert plans.granted_budget(600, elapsed_s=0, deadline_s=1000, reserve_s=100) == 600
    assert plans.granted_budget(600, elapsed_s=500, deadline_s=1000, reserve_s=100) == 400
    assert plans.granted_budget(0, elapsed_s=500, deadline_s=1000, reserve_s=100) == 400


def test_plan_runs_in_parallel_then_a_deadline_leaves_runs_out(tiny_sequences):
    path = write_plan(
        tiny_sequences,
        """
jobs:
  - {dataset: tiny, models: [Pop], seeds: [0, 1]}
  - {dataset: tiny, models: [Pop], name: Pop-variant, budget_s: 500}
baselines: {tiny: Pop-variant}
""",
    )
    out = tiny_sequences / "out"
    common = dict(out=out, device="cpu", data_dir=tiny_sequences, echo=lambda _: None)
    record = plans.execute(path, workers=2, **common)
    assert [r["status"] for r in record.runs] == ["ok", "ok", "ok"] and not record.not_started
    # Two worker processes, neither of them this one, ran the three runs.
    assert len({r["pid"] for r in record.runs}) == 2 and os.getpid() not in {
        r["pid"] for r in record.runs
    }
    saved = json.loads((out / "plans" / "p.json").read_text())
    assert len(saved["runs"]) == 3 and saved["workers"] == 2
    # Each run's output went to its log; its result records the `bench run` it stands for.
    log = (out / "plans" / "p" / "logs" / "tiny__Pop-variant__seed-0.log").read_text()
    assert log.startswith("bench run --models Pop") and "\nok: test ndcg@10=" in log
    variant = contract.read_result(out / "runs" / "tiny" / "Pop-variant" / "seed-0.json")
    assert variant.command.startswith("bench run --models Pop --dataset tiny --seeds 0")
    assert "--name Pop-variant" in variant.command and "time_budget_s=500" in variant.command
    table = pd.read_csv(out / "leaderboard" / "tiny.csv").set_index("model")
    assert table.loc["Pop", "seeds"] == 2 and table.loc["Pop-variant", "seeds"] == 1
    references = pd.read_csv(out / "leaderboard" / "tiny.significance.csv")["reference"]
    assert "Pop-variant" in set(references)  # the plan's baseline

    # Resumed: finished runs are not started again and the earlier record is kept.
    again = plans.execute(path, resume=True, **common)
    assert not again.runs and not again.not_started
    assert [len(r["runs"]) for r in again.earlier] == [3]
    assert len(json.loads((out / "plans" / "p.json").read_text())["earlier"]) == 1

    # A result its budget cut off stands for a run with the same cap, not for an uncapped one.
    variant = out / "runs" / "tiny" / "Pop-variant" / "seed-0.json"
    cut = dataclasses.replace(contract.read_result(variant), stop_reason="time_budget")
    contract.write_result(out, cut)
    assert not plans.execute(path, resume=True, **common).runs
    uncapped = write_plan(tiny_sequences, path.read_text().replace("budget_s: 500", "budget_s: 0"))
    rerun = plans.execute(uncapped, resume=True, **common)
    assert [(r["name"], r["status"]) for r in rerun.runs] == [("Pop-variant", "ok")]
    assert rerun.runs[0]["pid"] == os.getpid()  # one worker: in this process
    assert contract.read_result(variant).stopped_by_budget is False

    # 0.5 s left after the reserve: below min_budget_s, so nothing starts.
    late = plans.execute(path, deadline_s=100, reserve_s=99.5, min_budget_s=1, **common)
    assert not late.runs and [r["name"] for r in late.not_started] == [None, None, "Pop-variant"]
    assert all(r["why"].endswith("s left") for r in late.not_started)


def test_a_plan_is_checked_whole_before_its_first_run_starts(tiny_sequences):
    """The pre-flight of every run (as `bench run` would check it) comes first: a misspelt
    setting in the plan's last job stops the plan before any process starts."""
    path = write_plan(
        tiny_sequences,
        """
jobs:
  - {dataset: tiny, models: [Pop]}
  - {dataset: tiny, models: [SASRec], set: {hiden_size: 8}}
""",
    )
    out = tiny_sequences / "out"
    with pytest.raises(BenchError, match="unknown setting 'hiden_size'.*did you mean hidden_size"):
        plans.execute(path, out=out, device="cpu", data_dir=tiny_sequences, echo=print)
    assert not (out / "plans").exists() and not (out / "runs").exists()


def test_status_says_where_a_two_stage_run_stands_in_its_pre_training(tiny_sequences):
    from bench import api
    from bench.progress import plan_progress, remaining

    settings = {**TINY, "pretrain_epochs": 5, "stopping_step": 10}
    path = write_plan(
        tiny_sequences,
        f"jobs:\n  - {{dataset: tiny, models: [S3Rec], epochs: 3, set: {json.dumps(settings)}}}\n",
    )
    out = tiny_sequences / "out"
    common = dict(out=out, data_dir=tiny_sequences, device="cpu")
    # One epoch of each stage, then the budget: pre-training ended, fine-tuning has a checkpoint.
    cut = {**settings, "time_budget_s": 1e-6}
    (partial,) = api.run(["S3Rec"], "tiny", settings=cut, epochs=3, **common).results
    assert partial.stopped_by_budget and len(partial.pretrain_epochs) == 1
    (folder,) = (out / "checkpoints" / "tiny" / "S3Rec").iterdir()
    weights = torch.load(run_state.pretrained_weights(folder, "S3Rec"), weights_only=True)
    stage_s = weights["elapsed_seconds"]
    fine_state = torch.load(folder / "last.pth", weights_only=True)
    fine_s = fine_state["elapsed_seconds"]

    (fine_tuning,) = plan_progress(path, **common)
    assert fine_tuning.state == "unfinished" and fine_tuning.epochs == 1
    assert fine_tuning.train_seconds == pytest.approx(stage_s + fine_s)  # both stages count
    assert fine_tuning.pretrain_seconds == stage_s
    per_epoch = remaining([fine_tuning]).unfinished_max_h * 3600 / 2  # 2 epochs left
    assert per_epoch == pytest.approx(fine_s)  # fine-tuning's own seconds an epoch

    (folder / "last.pth").unlink()  # between the stages
    (between,) = plan_progress(path, **common)
    assert (between.state, between.epochs, between.train_seconds) == ("unfinished", 0, stage_s)
    assert between.note.endswith("pre-training ended after 1 epochs; fine-tuning next")

    # Inside the stage: its state after epoch 1 of 5 (a fine-tuning state stands in for it).
    state = fine_state | {"epoch": 1, "elapsed_seconds": 4.0}
    run_state.save(folder / run_state.PRETRAIN_LAST, state)
    run_state.pretrained_weights(folder, "S3Rec").unlink()
    (inside,) = plan_progress(path, **common)
    assert (inside.state, inside.epochs, inside.train_seconds) == ("unfinished", 0, 4.0)
    assert inside.note.endswith("pre-training: 2 / 5 epochs")
    assert remaining([inside]).unmeasured == 1


def test_status_says_which_runs_finished_where_the_others_stand_and_which_wait(
    tiny_sequences, monkeypatch, capsys
):
    from bench import api, cli
    from bench.progress import plan_progress

    settings = {"embedding_size": 8, "train_batch_size": 16, "threads": 1, "stopping_step": 10}
    path = write_plan(
        tiny_sequences,
        f"""
jobs:
  - {{dataset: tiny, models: [BPR], seeds: [0, 1], epochs: 50, set: {json.dumps(settings)}}}
  - {{dataset: tiny, models: [Pop]}}
""",
    )
    out = tiny_sequences / "out"
    common = dict(out=out, data_dir=tiny_sequences, device="cpu")
    before = plan_progress(path, **common)
    assert [(p.run.label, p.run.seed, p.state) for p in before] == [
        ("BPR", 0, "not started"),
        ("BPR", 1, "not started"),
        ("Pop", 0, "not started"),
    ]
    # BPR seed 0 cut by a tiny time budget: its checkpoint is where a --resume continues from.
    cut = {**settings, "epochs": 50, "time_budget_s": 1e-3}
    (partial,) = api.run(["BPR"], "tiny", settings=cut, **common).results
    assert partial.stopped_by_budget
    api.run(["Pop"], "tiny", **common)
    bpr0, bpr1, pop = plan_progress(path, **common)
    assert bpr0.state == "unfinished" and bpr0.epochs == len(partial.epochs) >= 1
    assert bpr0.epoch_limit == 50 and bpr0.patience[1] == 10
    assert bpr0.best_valid_score == partial.valid["ndcg@10"] and bpr0.train_seconds > 0
    assert bpr0.note == "a result that does not count: cut by its time budget"
    assert bpr1.state == "not started" and bpr1.note is None
    failed = dataclasses.replace(partial, seed=1, status="failed")
    contract.write_result(out, failed)
    assert plan_progress(path, **common)[1].note == "a result that does not count: the run failed"
    contract.run_path(out, "tiny", "BPR", 1).unlink()
    contract.per_user_path(contract.run_path(out, "tiny", "BPR", 1)).unlink(missing_ok=True)
    assert (
        pop.state == "finished"
        and pop.test_score
        == contract.read_result(contract.run_path(out, "tiny", "Pop", 0)).test["ndcg@10"]
    )

    # A checkpoint taken inside an epoch says how far into it the run got.
    (last,) = (out / "checkpoints" / "tiny" / "BPR").glob("seed-0-*/last.pth")
    state = torch.load(last, weights_only=True)
    run_state.save(last, {**state, "mid_epoch": {"epoch": state["epoch"] + 1, "batches": 3}})
    assert plan_progress(path, **common)[0].batches_into_epoch == 3
    # In parts for a git host: said beside what was said of its result.
    from bench.checkpoint_parts import join_all, split_large

    split_large(last.parent, max_bytes=4096)
    assert plan_progress(path, **common)[0].note == (
        "a result that does not count: cut by its time budget; "
        "checkpoint in parts for a git host: --resume joins them"
    )
    join_all(last.parent)

    monkeypatch.setattr(sys, "argv", ["bench", "plan", str(path), "--status", "--out", str(out)])
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--data-dir", str(tiny_sequences)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "1 of 3 runs finished, 1 unfinished, 1 not started" in printed
    assert "1 others not measured yet" in printed  # BPR seed 1: its row has no finished run
    assert f"{bpr0.epochs} / 50 + 3 batches" in printed
    assert not (out / "plans").exists()  # nothing was run or recorded


def _ctrl_c(_executor, timeout=None):
    raise KeyboardInterrupt


def _sigterm(_executor, timeout=None):
    # What a scheduler or a `kill` sends; a plan started in the background ignores Ctrl-C.
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("stop", [_ctrl_c, _sigterm], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_plan_stops_its_runs_and_keeps_its_record(tiny_sequences, monkeypatch, stop):
    path = write_plan(tiny_sequences, "jobs:\n  - {dataset: tiny, models: [Pop]}\n")
    # Stopped while its run is with a worker process.
    monkeypatch.setattr(executor.PoolExecutor, "wait", stop)
    out = tiny_sequences / "out"
    common = dict(out=out, device="cpu", data_dir=tiny_sequences, echo=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        plans.execute(path, workers=2, **common)
    saved = json.loads((out / "plans" / "p.json").read_text())
    assert [r["interrupted"] for r in saved["runs"]] == [True]
    assert saved["runs"][0]["status"] == "interrupted" and saved["finished_at"] is None
    assert not (out / "runs").exists()  # the stopped run wrote no result
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_a_second_signal_does_not_cut_the_cleanup_short(tiny_sequences, monkeypatch):
    """`uv run bench plan` forwards the SIGTERM it gets: the plan may see the signal twice."""
    path = write_plan(tiny_sequences, "jobs:\n  - {dataset: tiny, models: [Pop]}\n")
    monkeypatch.setattr(executor.PoolExecutor, "wait", _sigterm)
    stop_all = executor.PoolExecutor._stop_all

    def stop_and_signal_again(pool):
        os.kill(os.getpid(), signal.SIGTERM)
        stop_all(pool)

    monkeypatch.setattr(executor.PoolExecutor, "_stop_all", stop_and_signal_again)
    out = tiny_sequences / "out"
    sigint = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        plans.execute(
            path, workers=2, out=out, device="cpu", data_dir=tiny_sequences, echo=lambda _: None
        )
    saved = json.loads((out / "plans" / "p.json").read_text())
    assert [r["interrupted"] for r in saved["runs"]] == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is sigint


@pytest.mark.parametrize("plan", sorted((ROOT / "configs" / "plans").glob("*.yaml")), ids=str)
def test_shipped_plans_name_known_models_and_datasets(plan):
    from bench import configs
    from recbole_ext import registry

    runs = plans.load_plan(plan)
    assert runs
    for run in runs:
        assert registry.get(run.model)
        assert configs.ConfigTree.default().has_dataset_config(run.dataset)
    labels = {run.label for run in runs}
    for baseline in plans.load_baselines(plan).values():
        assert baseline in labels or registry.get(baseline)


def test_what_is_left_is_estimated_from_the_runs_own_seconds():
    from bench.progress import RunProgress, remaining

    def run(label: str, seed: int, state: str = "not started", **known) -> RunProgress:
        return RunProgress(plans.PlannedRun("beauty", label, seed, 0.0), state, **known)

    def unfinished(label: str, epochs: int, limit: int, spent: int, seconds: float):
        # Warm-up to epoch 23, patience 20, ``seconds`` an epoch.
        known = dict(epoch_limit=limit, patience=(spent, 20), warmup=23)
        return run(label, 0, "unfinished", epochs=epochs, train_seconds=epochs * seconds, **known)

    hour = 3600.0
    progress = [
        run("A", 0, "finished", epochs=43, train_seconds=2 * hour),
        run("A", 1, "finished", epochs=50, train_seconds=4 * hour),
        # Inside its warm-up: at least 22 - 10 + 21 = 33 epochs more.
        unfinished("A", epochs=10, limit=400, spent=0, seconds=360.0),
        run("A", 3),
        # After its warm-up with 5 validations spent: 16 more at least, capped by the limit.
        unfinished("B", epochs=90, limit=100, spent=5, seconds=36.0),
        run("C", 0),
    ]
    left = remaining(progress)
    assert left.unfinished_min_h == pytest.approx((33 * 360 + 10 * 36) / hour)
    assert left.unfinished_max_h == pytest.approx((390 * 360 + 10 * 36) / hour)
    assert (left.not_started_runs, left.not_started_h, left.unmeasured) == (1, 3.0, 1)
