"""Benchmark scripts' reports, from synthetic records (no training): the ContrastVAE side by side
and the run-cost table; benchmarks/cpu_training.py (its plan, bounds, timing, report, a tiny
measurement of each variant, and a --quick smoke run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, TINY


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
    assert "3 epochs each" in text and "(the same README settings) through" in text


def test_side_by_side_matches_the_official_epochs_with_our_settings(side_by_side, tmp_path):
    report = {"sides": {}, "match_epochs": True, "side_time_limit_s": 3600.0, "epochs": 400}
    argv = ["--sides", "official,ours", "--match-epochs", "--set", "official=true"]
    official = side_by_side.worker_command(argv, "official", tmp_path / "o.json", report)
    assert official[-4:] == ["--worker", "official", "--worker-out", str(tmp_path / "o.json")]
    report["sides"]["official"] = [_epoch(n, 4.0, 0.01, 0.02) for n in (1, 2, 3, 4, 5, 6, 7)]
    ours = side_by_side.worker_command(argv, "ours", tmp_path / "u.json", report)
    args = side_by_side.parse_args(ours[2:])  # the worker's own parse: the last --epochs wins
    assert args.worker == "ours" and args.epochs == 7 and args.set == ["official=true"]
    report["match_epochs"] = False  # without the flag ours keeps --epochs
    assert "--epochs" not in side_by_side.worker_command(argv, "ours", tmp_path / "u", report)

    report.update(
        match_epochs=True, dataset="amazon-beauty", machine={"device": "cpu"}, measured_at="now",
        command="c", official_commit="abc", official_command="python main.py",
        ours_set=["official=true"], errors={},
    )  # fmt: skip
    for epoch in report["sides"]["official"]:  # measured on a CPU: no CUDA peak
        epoch["train_peak_mib"] = epoch["eval_peak_mib"] = None
    report["summary"] = side_by_side.summary(report)
    text = side_by_side.markdown(report)
    assert "the official code 7 epochs within its 3600-second limit, ours as many" in text
    assert "with `--set official=true` through the harness" in text
    assert "MiB" not in text.split("## Summary")[1]  # no CUDA peak on a CPU: none shown
    with pytest.raises(SystemExit, match="--match-epochs needs"):
        side_by_side.main(["--match-epochs", "--sides", "ours", "--out", str(tmp_path)])


def _run_result(
    model: str, seed: int, epochs: list[dict], device: str = "cpu", earlier: float = 0.0
) -> dict:
    return {
        "dataset": "d", "model": model, "seed": seed, "status": "ok",
        "stopped_by_budget": any(e.get("cut_after_batches") for e in epochs),
        "epochs": epochs,
        "timing": {"data_seconds": 2.0, "train_seconds": 9.0, "eval_seconds": 3.0 + seed,
                   "earlier_train_seconds": earlier},
        "memory": {"train": {"peak_mib": 100.0 + seed, "start_mib": 60.0 - seed},
                   "test": {"peak_mib": 80.0}},
        "environment": {"device": device, "device_name": "H", "cpu_count": 2},
    }  # fmt: skip


def test_run_costs_are_read_from_the_runs_records(tmp_path):
    from bench.contract import parse_result
    from bench.contract import write_result as write_run

    def write_result(out, record):  # the records below are schema-1 style: migrated on reading
        write_run(out, parse_result(record))

    from benchmarks import run_costs

    def epoch(n, seconds, cut=None, valid=1.0):
        return {"epoch": n, "train_seconds": seconds, "valid_score": 0.1,
                "valid_seconds": valid, "cut_after_batches": cut}  # fmt: skip

    # Seed 0: two whole epochs (4 s, 6 s) and one cut by the budget; seed 1: one whole (5 s).
    write_result(tmp_path, _run_result("A", 0, [epoch(0, 4.0), epoch(1, 6.0), epoch(2, 0.5, 3)]))
    # Seed 1 was resumed: 4 s of training in an earlier sitting count in its train s.
    write_result(tmp_path, _run_result("A", 1, [epoch(0, 5.0, valid=3.0)], earlier=4.0))
    write_result(tmp_path, _run_result("B", 0, [epoch(0, 0.2, 1)]))  # only a cut epoch
    write_result(tmp_path, _run_result("A", 2, [epoch(0, 1.0)], device="cuda"))
    failed = {"dataset": "d", "model": "C", "seed": 0, "status": "failed", "error": {}}
    write_result(tmp_path, failed)

    assert (
        run_costs.main(["--results", str(tmp_path), "--dataset", "d", "--note", "2 at once"]) == 0
    )
    report = json.loads((tmp_path / "perf" / "run_costs_d.json").read_text())
    assert list(report)[:2] == ["schema", "dataset"] and report["schema"] == run_costs.SCHEMA
    rows = {(r["model"], r["device"]): r for r in report["rows"]}
    assert set(rows) == {("A", "cpu (2 cores)"), ("B", "cpu (2 cores)"), ("A", "cuda (H)")}
    a = rows[("A", "cpu (2 cores)")]
    assert a["seeds"] == 2 and a["epochs"] == 2.0
    assert a["epoch_seconds"] == 5.0 and a["epoch_cut"] is False  # the cut 0.5 s left out
    assert a["valid_seconds"] == 1.0 and a["test_seconds"] == 3.5 and a["train_seconds"] == 11.0
    assert a["train_peak_mib"] == 101.0 and a["test_peak_mib"] == 80.0
    assert a["train_start_mib"] == 59.0  # the start of the seed whose peak is shown (seed 1)
    assert a["budget_limited"] == 1
    b = rows[("B", "cpu (2 cores)")]
    assert b["epoch_seconds"] == 0.2 and b["epoch_cut"] is True
    text = (tmp_path / "perf" / "run_costs_d.md").read_text()
    assert "| B | cpu (2 cores) | 1 | 1.0 | 0.2 \u2020 | 9.0 |" in text
    assert "| 101 / 80 | 59 |" in text
    assert "Runs: 2 at once" in text and "'2 at once'" in text
    assert f"records under `{(tmp_path / 'runs' / 'd').as_posix()}/`" in text  # where it read
    assert run_costs.main(["--results", str(tmp_path), "--dataset", "none"]) == 2


# --- benchmarks/cpu_training.py ------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_training():
    from benchmarks import cpu_training

    return cpu_training


def test_cpu_training_plan_and_its_filters(cpu_training):
    jobs = cpu_training.plan_jobs(cpu_training.parse_args(["--threads", "3"]))
    pairs = {(j["dataset"], j["model"]) for j in jobs}
    assert len(jobs) == 2 * len(pairs) == 2 * (2 * 9 + 2)
    assert {m for d, m in pairs if d == "ml-1m-strong"} == {"MultVAE", "HVampGated"}
    assert ("amazon-beauty", "S3Rec") in pairs and ("amazon-beauty", "MultVAE") not in pairs
    # ml-1m's "before" is always projected; every other job may run a whole epoch
    projected_only = {(j["dataset"], j["variant"]) for j in jobs if not j["allow_full_epoch"]}
    assert projected_only == {("ml-1m", "before")}
    assert {j["threads"] for j in jobs} == {3} and {j["max_batches"] for j in jobs} == {20}
    assert {(j["full_epoch_below"], j["data_dir"]) for j in jobs} == {(300.0, None)}

    args = cpu_training.parse_args(
        ["--models", "SASRec,MultVAE", "--datasets", "ml-1m-strong,ml-1m,ml-100k",
         "--variants", "after", "--max-batches", "7", "--full-epoch-below", "5",
         "--data-dir", "/d", "--cache-dir", "/c"]
    )  # fmt: skip
    jobs = cpu_training.plan_jobs(args)
    assert [(j["dataset"], j["model"], j["variant"]) for j in jobs] == [
        ("ml-1m-strong", "MultVAE", "after"),
        ("ml-1m", "SASRec", "after"),
        ("ml-100k", "SASRec", "after"),  # a dataset outside the plan runs every model asked
        ("ml-100k", "MultVAE", "after"),
    ]
    assert {j["max_batches"] for j in jobs} == {7} and {j["full_epoch_below"] for j in jobs} == {5}
    assert {(j["data_dir"], j["cache_dir"]) for j in jobs} == {("/d", "/c")}

    quick = cpu_training.parse_args(["--quick"])
    jobs = cpu_training.plan_jobs(quick)
    assert {j["dataset"] for j in jobs} == {"ml-100k"} and quick.max_batches == 3
    assert [j["model"] for j in jobs] == [m for m in cpu_training.QUICK["models"] for _ in "ab"]
    assert cpu_training.parse_args([]).threads == cpu_training.usable_cores()
    with pytest.raises(SystemExit):
        cpu_training.plan_jobs(cpu_training.parse_args(["--variants", "sideways"]))


def test_cpu_training_flop_bounds(cpu_training):
    from types import SimpleNamespace

    from torch import nn

    ct = cpu_training
    lengths = np.array([2, 3])
    # n (4H^2 + 2 H inner) summed: (16 + 16) * 5; causal attention H n (n + 1): 2 * (6 + 12)
    assert ct.transformer_macs(lengths, 2, 4, 1, causal=True) == 160 + 36
    assert ct.transformer_macs(lengths, 2, 4, 3, causal=False) == 3 * (160 + 2 * 2 * 13)

    config = {"hidden_size": 2, "inner_size": 4, "n_layers": 1, "loss_type": "CE"}
    data = ct.TrainingData(rows=2, batches=1, n_users=3, n_items=10, lengths=lengths, max_length=3)
    whole = ct.flop_bound("SASRec", SimpleNamespace(n_items=10, whole_sequence=True), config, data)
    assert whole["macs_terms"] == {"encoder": 196.0, "output": 5 * 2 * 10.0}  # every position
    assert whole["flops"] == whole["macs"] * 6
    prefix = ct.flop_bound("SASRec", SimpleNamespace(n_items=10), config, data)
    assert prefix["macs_terms"]["output"] == 2 * 2 * 10  # the last position of each row
    sampled = ct.flop_bound(
        "SASRec", SimpleNamespace(n_items=10), {**config, "sampled_negatives": 3}, data
    )
    assert sampled["macs_terms"]["output"] == 2 * 2 * (1 + 3)
    # BERT4Rec under whole sequences encodes window + next item, at most max_length (3, 3)
    bert = {**config, "mask_ratio": 0.5, "ft_ratio": 0.0}
    cloze = ct.flop_bound("BERT4Rec", SimpleNamespace(n_items=10, whole_sequence=True), bert, data)
    assert cloze["macs_terms"]["encoder"] == ct.transformer_macs(
        np.array([3, 3]), 2, 4, 1, causal=False
    )
    assert cloze["macs_terms"]["output"] == 0.5 * 6 * (4 + 20)

    graph = ct.TrainingData(rows=5, batches=3, n_users=4, n_items=6, interactions=10)
    light = ct.flop_bound("LightGCN", None, {"embedding_size": 4, "n_layers": 2}, graph)
    assert light["macs_terms"] == {"propagation": 3 * 2 * 20 * 4.0, "scores": 5 * 2 * 4.0}

    class Vae(nn.Module):
        def __init__(self, prior: bool) -> None:
            super().__init__()
            self.n_items = 10
            self.q_z_layers = nn.Sequential(nn.Linear(10, 3))
            self.q_z_mean, self.q_z_logvar = nn.Linear(3, 2), nn.Linear(3, 2)
            self.p_x = nn.Linear(2, 10)
            if prior:
                self.pseudo_inputs = SimpleNamespace(n_components=4)

    users = ct.TrainingData(rows=2, batches=1, n_users=3, n_items=10, row_nnz=7)
    plain = ct.flop_bound("MultVAE", Vae(prior=False), {}, users)
    # the input layer on the users' 7 non-zeros, the others dense for each of the 2 users
    assert plain["macs_terms"] == {"input_layers": 7 * 3.0, "dense_layers": 2 * (6 + 6 + 20.0)}
    vamp = ct.flop_bound("HVampGated", Vae(prior=True), {}, users)
    assert vamp["macs_terms"]["vamp_prior"] == 1 * 4 * (30 + 6 + 6) + 2 * 2 * 4 * 2
    assert ct.flop_bound("Pop", None, {}, users) is None


class _EpochCounter:
    """A trainer whose epoch trains on every batch the loader yields."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def _train_epoch(self, loader, epoch):
        self.epochs.append(sum(1 for _ in loader))


def test_cpu_training_times_batches_and_projects_the_epoch(cpu_training):
    batches = [{"item_id_list": np.zeros((4, 5 + i % 2))} for i in range(12)]
    trainer = _EpochCounter()
    timed = cpu_training.time_training(trainer, batches, 3, 2, 0.0, True, "item_id_list")
    assert trainer.epochs == [5]  # the warm-up and the timed batches only: no whole epoch
    assert timed["projected"] and timed["timed_batches"] == 3 and timed["warmup_batches"] == 2
    assert len(timed["batch_seconds"]) == 5 and timed["batch_widths"] == [5, 6]
    assert timed["seconds_per_batch"] == pytest.approx(sum(timed["batch_seconds"][2:]) / 3)
    assert timed["epoch_seconds"] == pytest.approx(timed["seconds_per_batch"] * 12)

    trainer = _EpochCounter()
    whole = cpu_training.time_training(trainer, batches, 3, 2, 1e9, True)
    assert trainer.epochs == [5, 12] and not whole["projected"]
    assert whole["epoch_seconds"] == whole["whole_epoch_seconds"] > 0

    trainer = _EpochCounter()  # a (dataset, variant) that is always projected
    assert cpu_training.time_training(trainer, batches, 3, 2, 1e9, False)["projected"]
    assert trainer.epochs == [5]


def _measure_job(data_dir, tmp_path, model: str, variant: str) -> dict:
    return {
        "kind": "measure", "dataset": "tiny", "model": model, "variant": variant,
        "max_batches": 2, "warmup_batches": 1, "full_epoch_below": 0.0,
        "allow_full_epoch": True, "threads": 1, "data_dir": str(data_dir),
        "cache_dir": str(tmp_path / "cache"), "settings": {**TINY, "train_batch_size": 16},
    }  # fmt: skip


def test_cpu_training_before_is_recboles_path(cpu_training, tiny_sequences, tmp_path):
    from recbole_ext import registry

    before = cpu_training.measure(_measure_job(tiny_sequences, tmp_path, "SASRec", "before"))
    (phase,) = before["phases"]
    assert phase["model_class"].startswith("recbole.model.sequential_recommender.")
    assert phase["train_regime"] == "interactions" and not phase["fast_evaluation"]
    assert phase["loader"] == "TrainDataLoader" and not phase["bucketed"]
    assert phase["train"]["batch_widths"] == [TINY["MAX_ITEM_LIST_LENGTH"]]  # no trimming
    assert phase["validation"]["users"] == 40 and phase["train"]["memory"]["peak_mib"] > 0
    assert phase["bound"]["macs_terms"]["output"] == phase["data"]["rows"] * 8 * 31

    after = cpu_training.measure(_measure_job(tiny_sequences, tmp_path, "SASRec", "after"))
    (phase,) = after["phases"]
    cls = registry.get("SASRec").cls
    assert phase["model_class"] == f"{cls.__module__}.{cls.__qualname__}"
    assert phase["fast_evaluation"] and phase["loader"] == "LengthBucketedBatches"
    assert after["dataset_cached"]  # the second build read the cache the first one wrote


@pytest.mark.parametrize("model", ["BERT4Rec", "S3Rec"])
def test_cpu_training_before_runs_per_prefix(cpu_training, tiny_sequences, tmp_path, model):
    # BERT4Rec's before is RecBole's class, which needs RecBole's masking transform in the
    # loaders; S3Rec's stays ours (RecBole's needs item attributes the data lack).
    result = cpu_training.measure(_measure_job(tiny_sequences, tmp_path, model, "before"))
    for phase in result["phases"]:
        assert phase["train_regime"] == "interactions" and not phase["whole_sequence"]
        assert phase["model_class"].startswith(
            "recbole.model." if model == "BERT4Rec" else "recbole_ext.models."
        )
        assert phase["train"]["batch_widths"] == [TINY["MAX_ITEM_LIST_LENGTH"]]
    assert [p["stage"] for p in result["phases"]] == (
        [None] if model == "BERT4Rec" else ["pretrain", "finetune"]
    )


def test_cpu_training_times_both_stages_of_s3rec(cpu_training, tiny_sequences, tmp_path):
    result = cpu_training.measure(_measure_job(tiny_sequences, tmp_path, "S3Rec", "after"))
    pretrain, finetune = result["phases"]
    assert pretrain["stage"] == "pretrain" and pretrain["validation"] is None
    assert finetune["stage"] == "finetune" and finetune["validation"]["seconds"] > 0
    assert set(pretrain["bound"]["macs_terms"]) == {"encoder", "mip", "sp"}
    assert pretrain["train"]["timed_batches"] == finetune["train"]["timed_batches"] == 2


def _phase(epoch_s: float, valid_s: float | None, projected: bool, flops: float) -> dict:
    return {
        "stage": None,
        "train": {"batches": 100, "epoch_seconds": epoch_s, "projected": projected,
                  "memory": {"peak_mib": 900.0}},
        "validation": None if valid_s is None else {"seconds": valid_s,
                                                    "memory": {"peak_mib": 800.0}},
        "bound": {"flops": flops, "macs": flops / 6, "macs_terms": {}, "formula": "SASRec"},
    }  # fmt: skip


def test_cpu_training_report_speedups_ratios_and_failures(cpu_training, tmp_path):
    def fake_spawn(job, time_limit):
        if job["kind"] == "matmul":
            return {"status": "ok", "gflops": [10.0, 20.0, 30.0], "size": 64, "machine": {}}
        if job["model"] == "GRU4Rec":
            return {"status": "timed out", "error": f"timed out after {time_limit:g} s"}
        if job["model"] == "NARM" and job["variant"] == "after":
            return {"status": "failed", "error": "ValueError: boom"}
        epoch = 40.0 if job["variant"] == "before" else 4.0
        return {"status": "ok", "notes": [], "phases": [_phase(epoch, 2.0, epoch > 10, 2e11)]}

    args = cpu_training.parse_args(
        ["--datasets", "ml-1m", "--models", "SASRec,GRU4Rec,NARM", "--out", str(tmp_path),
         "--time-limit", "9", "--threads", "2"]
    )  # fmt: skip
    report = cpu_training.run(args, "python benchmarks/cpu_training.py --x", fake_spawn)
    assert report["matmul"]["median_gflops"] == 20.0 and len(report["matmul"]["probes"]) == 2
    rows = {(r["model"], r["variant"]): r for r in report["rows"]}
    after = rows[("SASRec", "after")]
    assert after["speedup_epoch"] == 10.0 and after["speedup_validation"] == 1.0
    assert after["ratio_to_bound"] == pytest.approx(4.0 / (2e11 / 20e9))
    assert "speedup_epoch" not in rows[("NARM", "before")]  # its after failed
    assert rows[("GRU4Rec", "after")]["status"] == "timed out"

    saved = json.loads((tmp_path / "cpu_training.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    text = (tmp_path / "cpu_training.md").read_text()
    assert text.splitlines()[2] == "    python benchmarks/cpu_training.py --x"
    assert "## ml-1m" in text and "**20.0 GFLOP/s**" in text
    assert "| SASRec | before | 100 | 40.00 P | 2.00 | 900 / 800 | 200.0 | 4.0 |  |" in text
    after_line = "| SASRec | after | 100 | 4.00 | 2.00 | 900 / 800 | 200.0 | 0.4 | 10.00x / 1.00x |"
    assert after_line in text
    assert "timed out: timed out after 9 s" in text and "failed: ValueError: boom" in text
    assert "**LightGCN**: per batch" in text and "3 job(s) did not finish" in text


def test_cpu_training_update_replaces_the_pairs_measured_again(cpu_training, tmp_path):
    def spawn_at(epoch_after):
        def fake_spawn(job, time_limit):
            if job["kind"] == "matmul":
                return {"status": "ok", "gflops": [20.0], "size": 64, "machine": {"date": "d"}}
            epoch = 40.0 if job["variant"] == "before" else epoch_after
            return {"status": "ok", "notes": [], "phases": [_phase(epoch, 2.0, False, 2e11)]}

        return fake_spawn

    common = ["--datasets", "ml-1m", "--out", str(tmp_path), "--threads", "2"]
    first = cpu_training.parse_args([*common, "--models", "SASRec,GRU4Rec"])
    cpu_training.run(first, "first", spawn_at(4.0))
    again = cpu_training.parse_args([*common, "--models", "GRU4Rec,NARM", "--update"])
    report = cpu_training.run(again, "again", spawn_at(2.0))
    order = [(r["model"], r["variant"], r.get("update")) for r in report["rows"]]
    assert order == [
        ("SASRec", "before", None), ("SASRec", "after", None),
        ("GRU4Rec", "before", 1), ("GRU4Rec", "after", 1),
        ("NARM", "before", 1), ("NARM", "after", 1),
    ]  # fmt: skip
    assert report["rows"][3]["speedup_epoch"] == 20.0 and report["command"] == "first"
    assert report["updates"][0]["command"] == "again"
    assert report["updates"][0]["pairs"] == ["ml-1m:GRU4Rec", "ml-1m:NARM"]
    assert sorted((j["model"], j.get("update")) for j in report["jobs"])[0] == ("GRU4Rec", 1)
    text = (tmp_path / "cpu_training.md").read_text()
    assert "| GRU4Rec (update 1) | after |" in text and "**Update 1**" in text


def test_cpu_training_worker_records_a_crash_and_the_parent_a_hang(cpu_training, tmp_path):
    job_file = tmp_path / "job.json"
    result = tmp_path / "result.json"
    bad = {"kind": "measure", "dataset": "ml-100k", "model": "NoSuchModel", "variant": "after",
           "threads": 1, "cache_dir": str(tmp_path), "result": str(result)}  # fmt: skip
    job_file.write_text(json.dumps(bad))
    assert cpu_training.run_worker(job_file) == 0
    recorded = json.loads(result.read_text())
    assert recorded["status"] == "failed" and "NoSuchModel" in recorded["error"]
    assert recorded["machine"]["threads"] == 1

    hung = cpu_training.spawn({**bad, "kind": "matmul", "size": 8, "repeats": 1}, 0.05)
    assert hung["status"] == "timed out" and hung["wall_seconds"] < 30


@pytest.mark.slow
def test_cpu_training_quick_smoke_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/cpu_training.py", "--quick", "--models", "SASRec",
         "--threads", "1", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "cpu_training.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"before", "after"} and report["matmul"]["median_gflops"] > 0
    assert rows["before"]["train"]["projected"]  # a per-prefix epoch: 380 batches
    assert rows["after"]["speedup_epoch"] > 0 and rows["after"]["ratio_to_bound"] > 0
    assert report["settings"]["quick"] and "--quick" in report["command"]


def test_time_to_convergence_runs_to_the_stopping_rule_and_reports(tiny_sequences, tmp_path):
    """Two tiny SASRec runs trained until early stopping (patience 1) on the tiny data: each
    row says how it ended, its epochs and its test metric against the reference given."""
    path = ROOT / "benchmarks" / "time_to_convergence.py"
    spec = importlib.util.spec_from_file_location("time_to_convergence", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sets = [f"{k}={v}" for k, v in {**TINY, "stopping_step": 1, "epochs": 30}.items()]
    code = module.main(
        ["--dataset", "tiny", "--models", "SASRec", "--seeds", "0,1",
         "--data-dir", str(tiny_sequences), "--reference", "SASRec=0.5",
         "--out", str(tmp_path / "perf"), *[a for s in sets for a in ("--set", s)]]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "perf" / "time_to_convergence_tiny.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    for row in report["runs"]:
        assert row["stop_reason"] in ("early_stopping", "epoch_limit")
        assert 1 <= row["best_epoch"] + 1 <= row["epochs"] <= 30
        assert row["ratio_to_reference"] == pytest.approx(row["test"]["ndcg@10"] / 0.5)
    text = (tmp_path / "perf" / "time_to_convergence_tiny.md").read_text()
    assert "| SASRec | 1 |" in text and "--reference SASRec=0.5" in text
    with pytest.raises(SystemExit, match="key=value"):
        module.main(["--dataset", "tiny", "--models", "SASRec", "--set", "epochs"])


@pytest.mark.slow
def test_dropout_speed_times_the_op_and_training_steps(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/dropout_speed.py", "--runs", "ml-100k:MultVAE",
         "--steps", "1", "--rounds", "2", "--repeats", "2", "--warmup", "1",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "dropout_speed.json").read_text())
    assert len(report["ops"]) == 5 and all(op["pytorch"] > 0 < op["rand"] for op in report["ops"])
    (steps,) = report["steps"]
    assert steps["run"] == "ml-100k:MultVAE" and steps["dropout_modules_swapped"] == 1
    assert len(steps["rounds"]) == 2 and steps["speedup"] > 0
    assert "| ml-100k:MultVAE | 1 |" in (tmp_path / "dropout_speed.md").read_text()


@pytest.mark.slow
def test_malloc_speed_compares_both_sides_on_the_same_steps(tiny_sequences, tmp_path):
    from benchmarks import malloc_speed

    settings = "hidden_size=8,inner_size=16,n_layers=1,train_batch_size=16"
    args = ["--case", f"tiny:SASRec:{settings}", "--data-dir", str(tiny_sequences)]
    args += ["--rounds", "1", "--max-steps", "2", "--warmup-steps", "1", "--out", str(tmp_path)]
    assert malloc_speed.main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    (case,) = json.loads((tmp_path / "malloc.json").read_text())["cases"]
    assert case["rounds_ok"] == 1 and case["same_valid_score"] is True
    assert case["rounds"][0]["kept"]["malloc"] == "kept"
    assert case["rounds"][0]["system"]["malloc"] == "system"
    assert case["train_ratio"] > 0 and case["kept"]["minor_faults_per_step"] >= 0
    table = (tmp_path / "malloc.md").read_text()
    assert "| tiny:SASRec:" in table and "| yes |" in table
    with pytest.raises(SystemExit, match="DATASET:MODEL"):
        malloc_speed.main(["--case", "tiny", "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
