"""Leaderboards built from per-run results: aggregation, flags, significance, provenance."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from bench import leaderboard
from bench.contract import RunResult, parse_result, write_result
from bench.errors import BenchError

USERS = np.array([f"u{i}" for i in range(60)])


def _result(
    model,
    seed,
    ndcg,
    config_hash="a",
    status="ok",
    commit="c1",
    data_hash="h1",
    per_user=None,
    finished="2026-01-01T00:00:00+00:00",
):
    base = {"dataset": "d", "model": model, "seed": seed, "status": status}
    if status != "ok":
        return {**base, "error": {"type": "RuntimeError", "message": "boom"}}
    result = {
        **base,
        "family": "sequential",
        "quick": False,
        "config_hash": config_hash,
        "valid_metric": "ndcg@10",
        "best_epoch": seed + 1,
        "test": {"ndcg@10": ndcg, "hit@10": 2 * ndcg},
        "timing": {"train_seconds": 10.0},
        "data": {"sha256": {"d.inter": data_hash}, "users": 60, "items": 9, "interactions": 99},
        "environment": {
            "git_commit": commit,
            "packages": {"recbole": "1.2.1"},
            "device": "cpu",
            "device_name": "x86_64",
            "cpu_count": 2,
        },
        "config": {
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "MAX_ITEM_LIST_LENGTH": 50,
            "exclude_history_items": True,
            "metrics": ["NDCG", "Hit"],
            "topk": [10],
        },
        "finished_at": finished,
    }
    if per_user is not None:
        result["per_user"] = {
            "user_id": USERS,
            "ndcg@10": per_user,
            "hit@10": (per_user > 0).astype(float),
        }
    return result


def _write(out, record: dict) -> None:
    """Store a schema-1 style record (as the committed results are) through the contract."""
    record = dict(record)
    per_user = record.pop("per_user", None)
    write_result(out, dataclasses.replace(parse_result(record), per_user=per_user))


def test_mean_over_seeds_best_marked_and_failures_counted(tmp_path):
    for r in [
        _result("A", 0, 0.10),
        _result("A", 1, 0.20),
        _result("B", 0, 0.30),
        _result("C", 0, 0.0, status="failed"),
    ]:
        _write(tmp_path, r)
    csv_path, md_path = leaderboard.write(tmp_path, "d")
    table = pd.read_csv(csv_path)
    assert list(table["model"]) == ["B", "A", "C"]
    row_a = table.set_index("model").loc["A"]
    assert row_a["seeds"] == 2 and row_a["test_ndcg@10"] == pytest.approx(0.15)
    assert row_a["test_ndcg@10_std"] == pytest.approx(np.std([0.1, 0.2], ddof=1))
    assert row_a["best_epoch"] == pytest.approx(1.5)
    assert table.set_index("model").loc["C", "failed"] == 1
    md = md_path.read_text()
    # One seed: no std. The second best is in italics. No train_regime recorded: RecBole's.
    assert "| B | sequential | per-prefix | 1 |  | **0.3000** | **0.6000** |" in md
    assert "| A | sequential | per-prefix | 2 |  | _0.1500 ± 0.0707_ | _0.3000 ± 0.1414_ |" in md
    assert "**bold** is the best and _italics_ the second best" in md
    assert "C: 1 failed run(s)." in md


def test_rows_mixing_configs_commits_or_data_are_flagged(tmp_path):
    _write(tmp_path, _result("A", 0, 0.1, config_hash="x"))
    _write(tmp_path, _result("A", 1, 0.2, config_hash="y"))
    _write(tmp_path, _result("B", 0, 0.1, commit="c1"))
    _write(tmp_path, _result("B", 1, 0.2, commit="c2-dirty"))
    _write(tmp_path, _result("C", 0, 0.1, data_hash="h1"))
    _write(tmp_path, _result("C", 1, 0.2, data_hash="h2"))
    _write(tmp_path, _result("D", 0, 0.1))
    _write(tmp_path, _result("D", 1, 0.2))
    csv_path, md_path = leaderboard.write(tmp_path, "d")
    table = pd.read_csv(csv_path, keep_default_na=False).set_index("model")
    assert table.loc["A", "flags"] == "mixed-config" and table.loc["A", "config_hash"] == "x,y"
    assert table.loc["B", "flags"] == "mixed-commit" and table.loc["B", "mixed_commit"]
    assert table.loc["C", "flags"] == "mixed-data" and table.loc["C", "mixed_data"]
    assert table.loc["D", "flags"] == ""
    md = md_path.read_text()
    assert "Seeds of A ran with different configs (x,y)" in md
    assert "Seeds of B ran on different code versions (c1, c2-dirty)" in md
    assert "Seeds of C ran on different data files" in md
    assert "Rows ran on different data files" in md  # C's second fingerprint differs from all
    provenance = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert provenance["models"]["B"]["git_commits"] == ["c1", "c2-dirty"]
    assert provenance["models"]["A"]["config_hashes"] == ["x", "y"]
    assert len(provenance["dataset_fingerprints"]) == 2


def _significance_fixture(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(60)
    for seed in (0, 1):
        noise = rng.normal(0, 0.01, 60)
        runs = {
            "Strong": base + 0.3 + noise,
            "Twin": base + 0.3 + rng.normal(0, 0.01, 60),
            "Weak": base + noise,
        }
        for model, values in runs.items():
            _write(
                tmp_path,
                _result(
                    model,
                    seed,
                    float(values.mean()),
                    per_user=values,
                    finished=f"2026-01-0{seed + 1}T00:00:00+00:00",
                ),
            )


def test_significance_against_the_best_and_a_baseline(tmp_path):
    _significance_fixture(tmp_path)
    _, md_path = leaderboard.write(tmp_path, "d", baseline="Weak")
    sig = pd.read_csv(tmp_path / "leaderboard" / "d.significance.csv")
    best = sig[(sig["role"] == "best") & (sig["metric"] == "ndcg@10")]
    assert set(best["reference"]) == {best["reference"].iloc[0]}
    reference = best["reference"].iloc[0]
    assert reference in {"Strong", "Twin"}
    weak = best[best["model"] == "Weak"].set_index("test")
    assert weak["significant"].all() and (weak["mean_diff"] < -0.25).all()
    assert (weak["n_users"] == 60).all() and (weak["p_holm"] >= weak["p_value"]).all()
    assert weak.loc["wilcoxon", "effect_size_kind"] == "rank_biserial"
    assert weak.loc["t", "effect_size_kind"] == "cohens_d" and weak.loc["t", "effect_size"] < 0
    twin = "Twin" if reference == "Strong" else "Strong"
    assert not best[best["model"] == twin]["significant"].any()
    baseline = sig[(sig["role"] == "baseline") & (sig["metric"] == "ndcg@10")]
    assert set(baseline["reference"]) == {"Weak"} and baseline["significant"].all()
    assert set(sig["metric"]) == {"ndcg@10", "hit@10"}
    md = md_path.read_text()
    weak_row = next(line for line in md.splitlines() if line.startswith("| Weak |"))
    assert "†" in weak_row and "‡" not in weak_row
    twin_row = next(line for line in md.splitlines() if line.startswith(f"| {twin} |"))
    ndcg_cell = twin_row.split("|")[6]  # model, family, regime, seeds, noise, ndcg@10
    assert "†" not in ndcg_cell and "‡" in ndcg_cell
    assert "## Significance (ndcg@10)" in md and "Holm" in md
    assert f"significantly different from the best model, {reference}" in md


def test_seed_averaged_per_user_values_enter_the_tests(tmp_path):
    _significance_fixture(tmp_path)
    board = leaderboard.compute(tmp_path, "d")
    per_user = leaderboard.per_user_values(tmp_path, "d", board.results)
    assert len(per_user["Weak"]) == 60
    row = board.significance.query("model == 'Weak' and metric == 'ndcg@10' and test == 't'")
    table = board.table.set_index("model")
    # Same users in every seed: the mean of seed-averaged user values is the mean over seeds.
    assert row["mean_model"].iloc[0] == pytest.approx(table.loc["Weak", "test_ndcg@10"])


def test_provenance_states_protocol_data_code_and_dates(tmp_path):
    _significance_fixture(tmp_path)
    _, md_path = leaderboard.write(tmp_path, "d")
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["protocol"]["split"] == {"LS": "valid_and_test"}
    assert prov["protocol"]["max_sequence_length"] == 50
    assert prov["protocol"]["exclude_history_items"] is True
    assert prov["protocol"]["valid_metric"] == "ndcg@10"
    fingerprint = prov["dataset_fingerprints"][0]
    assert fingerprint["users"] == 60 and fingerprint["sha256"] == {"d.inter": "h1"}
    assert prov["git_commits"] == ["c1"] and prov["packages"] == {"recbole": ["1.2.1"]}
    assert prov["hardware"][0]["machine"]["cpu_count"] == 2
    assert prov["runs"]["first_finished_at"].startswith("2026-01-01")
    assert prov["runs"]["last_finished_at"].startswith("2026-01-02")
    assert prov["models"]["Weak"]["config_hashes"] == ["a"]
    md = md_path.read_text()
    assert "## Provenance" in md and "leave-one-out" in md and fingerprint["digest"] in md
    assert "history items excluded from the ranking: yes" in md and "2 CPUs" in md


def test_protocol_differences_across_rows_are_noted(tmp_path):
    general = _result("G", 0, 0.1)
    general["family"] = "general"
    general["config"]["MAX_ITEM_LIST_LENGTH"] = 7  # not read by a general model
    _write(tmp_path, general)
    _write(tmp_path, _result("S", 0, 0.2))
    _, md_path = leaderboard.write(tmp_path, "d")
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["protocol"]["max_sequence_length"] == 50 and prov["protocols"] == []
    assert "different protocols" not in md_path.read_text()
    other = _result("T", 0, 0.3)
    other["config"]["MAX_ITEM_LIST_LENGTH"] = 200
    _write(tmp_path, other)
    _, md_path = leaderboard.write(tmp_path, "d")
    md = md_path.read_text()
    assert "Rows followed different protocols" in md
    # G (general) fits either protocol and is listed with both.
    assert "- Protocol 2 (G, T):" in md and "max sequence length 200" in md


def test_unknown_baseline_is_a_bench_error(tmp_path):
    _write(tmp_path, _result("A", 0, 0.1))
    _write(tmp_path, _result("F", 0, 0.0, status="failed"))
    with pytest.raises(BenchError, match="unknown"):
        leaderboard.write(tmp_path, "d", baseline="Nope")
    with pytest.raises(BenchError, match="no successful run"):
        leaderboard.write(tmp_path, "d", baseline="F")


def test_no_results_writes_nothing(tmp_path):
    assert leaderboard.write(tmp_path, "d") is None
    assert not (tmp_path / "leaderboard").exists()


def test_budget_limited_runs_are_noted(tmp_path):
    result = _result("A", 0, 0.1)
    result["stopped_by_budget"] = True
    _write(tmp_path, result)
    _write(tmp_path, _result("A", 1, 0.2))
    csv_path, md_path = leaderboard.write(tmp_path, "d")
    assert pd.read_csv(csv_path).loc[0, "budget_limited"] == 1
    assert "A: 1 of 2 run(s) stopped by the training time budget" in md_path.read_text()


def test_capped_runs_put_a_budget_limited_line_in_the_header(tmp_path):
    for seed, (cap, stopped) in enumerate([(900.0, True), (850.0, False)]):
        result = _result("A", seed, 0.1 + seed)
        result["config"] = {**(result.get("config") or {}), "time_budget_s": cap}
        result["stopped_by_budget"] = stopped
        _write(tmp_path, result)
    _write(tmp_path, _result("B", 0, 0.3))
    text = leaderboard.write(tmp_path, "d")[1].read_text()
    header = text.split("| model |")[0]
    assert "**Budget-limited:** 1 of 3 runs stopped at a wall-clock training cap" in header
    assert "(`time_budget_s`, 900 s)" in header and "1 more ran under a cap and finished" in header


def test_provenance_names_the_commands_that_made_the_board(tmp_path):
    for seed in (0, 1):
        result = _result("A", seed, 0.1 + seed / 10)
        result["command"] = f"bench run --models A --dataset d --seeds {seed}"
        _write(tmp_path, result)
    _, md_path = leaderboard.write(tmp_path, "d")
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["models"]["A"]["commands"] == [
        "bench run --models A --dataset d --seeds 0",
        "bench run --models A --dataset d --seeds 1",
    ]
    assert prov["rebuild_command"] == f"bench leaderboard --results {tmp_path} --dataset d"
    assert f"Rebuilt by `bench leaderboard --results {tmp_path} --dataset d`" in md_path.read_text()


def test_a_refresh_after_new_runs_keeps_the_baseline(tmp_path):
    _significance_fixture(tmp_path)
    leaderboard.write(tmp_path, "d", baseline="Weak")
    _write(tmp_path, _result("New", 0, 0.05))
    _, md_path = leaderboard.refresh(tmp_path, "d")
    assert "significantly different from the baseline, Weak" in md_path.read_text()
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["statistics"]["baseline"] == "Weak"
    assert prov["rebuild_command"].endswith("--dataset d --baseline Weak")
    # A baseline whose runs are gone is dropped rather than failing the refresh.
    for path in (tmp_path / "runs" / "d" / "Weak").glob("*"):
        path.unlink()
    _, md_path = leaderboard.refresh(tmp_path, "d")
    assert (
        "baseline"
        not in json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())[
            "rebuild_command"
        ]
    )
    # `bench leaderboard` without --baseline rebuilds without one.
    leaderboard.write(tmp_path, "d")
    assert leaderboard.written_baseline(tmp_path, "d") is None


def _row(md: str, model: str) -> list[str]:
    """The cells of ``model``'s row in the leaderboard table."""
    line = next(line for line in md.splitlines() if line.startswith(f"| {model} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _skewed_fixture(tmp_path):
    """Skew has the baseline Ref's mean but a skewed difference to it: 45 users gain 0.02,
    5 lose 0.18, 10 tie. The t-test sees no difference; Wilcoxon (symmetry) rejects."""
    rng = np.random.default_rng(5)
    ref = rng.random(60) * 0.5
    diff = np.concatenate([np.full(45, 0.02), np.full(5, -0.18), np.zeros(10)])
    for model, values in {"Top": ref + 0.3, "Ref": ref, "Skew": ref + diff}.items():
        _write(tmp_path, _result(model, 0, float(values.mean()), per_user=values))


def test_the_t_test_decides_the_markers_unless_wilcoxon_is_asked(tmp_path):
    _skewed_fixture(tmp_path)
    _, md_path = leaderboard.write(tmp_path, "d", baseline="Ref")
    sig = pd.read_csv(tmp_path / "leaderboard" / "d.significance.csv")
    skew = sig.query("model == 'Skew' and reference == 'Ref' and metric == 'ndcg@10'")
    skew = skew.set_index("test")
    assert skew.loc["t", "p_value"] > 0.5 and skew.loc["wilcoxon", "p_value"] < 1e-3
    md = md_path.read_text()
    assert "‡" not in _row(md, "Skew")[5]  # ndcg@10: no baseline marker under the t-test
    assert "(paired t-test on per-user values, Holm-adjusted" in md
    assert "the paired t-test decides the markers" in md
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["statistics"]["marker_test"] == "t"
    assert "--test" not in prov["rebuild_command"]

    _, md_path = leaderboard.write(tmp_path, "d", baseline="Ref", test="wilcoxon")
    md = md_path.read_text()
    assert "‡" in _row(md, "Skew")[5]
    assert "(Wilcoxon signed-rank test on per-user values, Holm-adjusted" in md
    assert "the Wilcoxon signed-rank test decides the markers" in md
    # The tests and their numbers are the same; only the deciding one changed.
    again = pd.read_csv(tmp_path / "leaderboard" / "d.significance.csv")
    pd.testing.assert_frame_equal(sig, again)
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["statistics"]["marker_test"] == "wilcoxon"
    assert prov["rebuild_command"].endswith("--baseline Ref --test wilcoxon")
    # A refresh after new runs keeps the test the board was built with.
    _write(tmp_path, _result("New", 0, 0.05))
    leaderboard.refresh(tmp_path, "d")
    assert leaderboard.written_test(tmp_path, "d") == "wilcoxon"
    with pytest.raises(BenchError, match="unknown test"):
        leaderboard.write(tmp_path, "d", test="sign")


def test_confidence_intervals_bootstrap_the_primary_metric_and_rebuild_identically(tmp_path):
    _significance_fixture(tmp_path)
    csv_path, md_path = leaderboard.write(tmp_path, "d", baseline="Weak")
    sig_path = tmp_path / "leaderboard" / "d.significance.csv"
    first = {p: p.read_bytes() for p in (csv_path, md_path, sig_path)}
    sig = pd.read_csv(sig_path)
    assert dict(sig.groupby("metric")["ci_method"].unique().map(list)) == {
        "ndcg@10": ["bootstrap"],
        "hit@10": ["t"],
    }
    assert ((sig["ci_low"] <= sig["mean_diff"]) & (sig["mean_diff"] <= sig["ci_high"])).all()
    weak = sig.query("model == 'Weak' and role == 'best' and metric == 'ndcg@10'").iloc[0]
    assert weak["ci_high"] < 0  # Weak is 0.3 below on every user
    md = md_path.read_text()
    assert f"[{weak['ci_low']:+.4f}, {weak['ci_high']:+.4f}]" in md.split("## Significance")[1]
    assert "95% CI" in md and "percentile bootstrap over users" in md
    # A rebuild from the same runs writes the same bytes (the bootstrap seed is fixed).
    leaderboard.write(tmp_path, "d", baseline="Weak")
    assert {p: p.read_bytes() for p in first} == first


def test_rows_within_seed_noise_of_a_reference_are_flagged(tmp_path):
    for model, values in {
        "Best": [0.30, 0.32],  # mean 0.31, std 0.014
        "Near": [0.30, 0.31],  # 0.005 below the best: less than the best's std
        "Far": [0.10, 0.11],
        "Solo": [0.309],  # one seed: no std, never flagged
    }.items():
        for seed, value in enumerate(values):
            _write(tmp_path, _result(model, seed, value))
    _, md_path = leaderboard.write(tmp_path, "d")
    md = md_path.read_text()
    flags = {m: _row(md, m)[4] for m in ("Best", "Near", "Far", "Solo")}
    assert flags == {"Best": "", "Near": "≈†", "Far": "", "Solo": ""}
    assert "A row with a single seed has no std and cannot be flagged" in md
    # Against a baseline too; a single-seed reference leaves the row's own std as threshold.
    _, md_path = leaderboard.write(tmp_path, "d", baseline="Solo")
    md = md_path.read_text()
    flags = {m: _row(md, m)[4] for m in ("Best", "Near", "Far", "Solo")}
    assert flags == {"Best": "≈‡", "Near": "≈†‡", "Far": "", "Solo": ""}
    assert "(≈‡: from the baseline's)" in md


def test_the_regime_column_names_how_sequential_rows_trained(tmp_path):
    def run(model, seed, family, regime):
        result = _result(model, seed, 0.1 + seed / 100)
        result["family"] = family
        if regime is not None:
            result["config"]["train_regime"] = regime
        _write(tmp_path, result)

    run("Whole", 0, "sequential", "users")
    run("Prefix", 0, "sequential", "interactions")
    run("Default", 0, "sequential", None)  # the harness's default: interactions
    run("Mixed", 0, "sequential", "users")
    run("Mixed", 1, "sequential", "interactions")
    run("Users", 0, "general", "users")  # no prefixes outside sequential models
    csv_path, md_path = leaderboard.write(tmp_path, "d")
    table = pd.read_csv(csv_path, keep_default_na=False).set_index("model")
    assert table["regime"].to_dict() == {
        "Mixed": "mixed",
        "Whole": "whole-sequence",
        "Prefix": "per-prefix",
        "Default": "per-prefix",
        "Users": "",
    }
    assert list(table.columns[:2]) == ["family", "regime"]
    md = md_path.read_text()
    assert _row(md, "Whole")[:3] == ["Whole", "sequential", "whole-sequence"]
    assert _row(md, "Mixed")[2] == "mixed" and _row(md, "Users")[2] == ""
    assert "`regime`: how a sequential model trained" in md
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["models"]["Mixed"]["train_regimes"] == ["users", "interactions"]


def _typed(model: str, seed: int, ndcg: float, **fields) -> RunResult:
    """A schema-2 result (as the runner writes them now)."""
    record = {k: v for k, v in _result(model, seed, ndcg).items() if k != "stopped_by_budget"}
    return dataclasses.replace(parse_result(record), **fields)


def test_rows_and_header_say_how_the_runs_stopped(tmp_path):
    write_result(tmp_path, _typed("A", 0, 0.10, stop_reason="early_stopping"))
    write_result(tmp_path, _typed("A", 1, 0.20, stop_reason="early_stopping"))
    write_result(tmp_path, _typed("B", 0, 0.30, stop_reason="epoch_limit"))
    csv_path, md_path = leaderboard.write(tmp_path, "d")
    table = pd.read_csv(csv_path).set_index("model")
    assert table.loc["A", "stop_reasons"] == "early_stopping:2"
    assert table.loc["B", "stop_reasons"] == "epoch_limit:1"
    md = md_path.read_text()
    assert _row(md, "A")[-2:] == ["early 2", "`a`"] and _row(md, "B")[-2] == "limit 1"
    header = md.split("| model |")[0]
    assert (
        "**Converged:** no run was cut by a training time budget; of 3 runs, 2 ended by early "
        "stopping and 1 at their epoch limit (`epochs`)." in header
    )
    assert "`stop`: how the row's runs ended" in header and "Budget-limited" not in header
    assert "**Hyperparameters:** every row runs its model's defaults" in header
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["models"]["A"]["stop_reasons"] == {"early_stopping": 2}
    assert prov["runs"]["stop_reasons"] == {"early_stopping": 2, "epoch_limit": 1}

    cut = _typed("C", 0, 0.05, stop_reason="time_budget", config={"time_budget_s": 60.0})
    write_result(tmp_path, cut)
    md = leaderboard.write(tmp_path, "d")[1].read_text()
    header = md.split("| model |")[0]
    assert "**Budget-limited:** 1 of 4 runs stopped at a wall-clock training cap" in header
    assert "Converged" not in header and _row(md, "C")[-2] == "budget 1"


def test_header_names_the_rows_with_tuned_hyperparameters(tmp_path):
    write_result(tmp_path, _typed("A", 0, 0.1, command="bench run --models A --tuned --out r"))
    write_result(tmp_path, _typed("B", 0, 0.2, command="bench run --models B --set lr=0.1"))
    write_result(tmp_path, _typed("C", 0, 0.3, command="bench tune --model C --dataset d"))
    header = leaderboard.write(tmp_path, "d")[1].read_text().split("| model |")[0]
    assert "**Hyperparameters:** A, C use tuned or own configuration files" in header
    assert "untuned" in header and "every row runs" not in header


def test_a_commit_that_only_adds_results_leaves_a_row_one_code_version(tmp_path):
    """Seeds run before and after a results-only commit differ in HEAD but not in the last
    commit that changed code: one code version, no mixed-commit flag."""
    for seed, head in enumerate(["c1", "c2"]):
        result = _typed("A", seed, 0.1 + seed / 10, stop_reason="early_stopping")
        result.environment.git_commit = head
        write_result(tmp_path, dataclasses.replace(result, code_version="code1"))
    write_result(tmp_path, _typed("B", 0, 0.3, stop_reason="early_stopping", code_version="x"))
    write_result(tmp_path, _typed("B", 1, 0.3, stop_reason="early_stopping", code_version="y"))
    csv_path, md_path = leaderboard.write(tmp_path, "d")
    table = pd.read_csv(csv_path, keep_default_na=False).set_index("model")
    assert table.loc["A", "flags"] == "" and table.loc["B", "flags"] == "mixed-commit"
    prov = json.loads((tmp_path / "leaderboard" / "d.provenance.json").read_text())
    assert prov["models"]["A"]["git_commits"] == ["c1", "c2"]
    assert prov["models"]["A"]["code_versions"] == ["code1"]
    md = md_path.read_text()
    assert "Seeds of B ran on different code versions (x, y)." in md
    assert "- Code: commit `code1`, `x`, `y`." in md


def test_train_seconds_count_a_resumed_runs_earlier_sittings(tmp_path):
    from bench.contract import Timing

    resumed = Timing(train_seconds=10.0, resumed_from_epoch=5, earlier_train_seconds=30.0)
    write_result(tmp_path, _typed("A", 0, 0.10, timing=Timing(train_seconds=20.0)))
    write_result(tmp_path, _typed("A", 1, 0.20, timing=resumed))
    table = pd.read_csv(leaderboard.write(tmp_path, "d")[0]).set_index("model")
    assert table.loc["A", "train_seconds"] == pytest.approx(30.0)  # (20 + (10 + 30)) / 2
