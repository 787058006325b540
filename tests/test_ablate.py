"""bench ablate: grid files, the reference variant, the seed-paired statistics and a real grid of
two keys (tiny SASRec on ml-100k)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from scipy import stats

from bench.contract import RunResult
from bench.errors import BenchError

FAST = {
    "hidden_size": 8,
    "inner_size": 16,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 512,
    "train_sample_limit": 1000,
    "eval_user_limit": 100,
}


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid:\n  n_layers: []\n", "expected a non-empty list"),
        ("grid:\n  n_layers: 2\n", "expected a non-empty list"),
        ("grid: [1, 2]\n", "'grid' must map each key"),
        ("grids:\n  n_layers: [1]\n", "unknown top-level key(s) grids"),
        ("grid:\n  n_layers: [1, 1]\n", "duplicate values"),
    ],
)
def test_malformed_grid_is_one_line_bench_error(tmp_path: Path, text: str, message: str) -> None:
    from bench.tuning.ablation import load_grid

    with pytest.raises(BenchError) as err:
        load_grid(_grid(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_grid_key_and_clash_with_set_are_refused(tmp_path: Path) -> None:
    from bench.tuning import ablate

    typo = _grid(tmp_path, "grid:\n  n_layer: [1, 2]\n")
    with pytest.raises(BenchError, match="unknown setting 'n_layer'.*did you mean n_layers"):
        ablate("SASRec", "ml-100k", typo, seeds=[0], out=tmp_path / "out", device="cpu")
    grid = _grid(tmp_path, "grid:\n  n_layers: [1, 2]\n")
    with pytest.raises(BenchError, match="both in the grid"):
        ablate("SASRec", "ml-100k", grid, settings={"n_layers": 1}, out=tmp_path / "out")
    assert not (tmp_path / "out" / "ablations").exists()


def test_summary_pairs_seeds_and_tests_only_with_three_or_more() -> None:
    from bench.tuning.ablation import summarize

    combos = [{"k": "full"}, {"k": "no-x"}]
    full = {0: 0.30, 1: 0.32, 2: 0.31}
    worse = {0: 0.20, 1: 0.25, 2: 0.22}

    def run(seed: int, status: str = "ok", value: float = 0.0) -> RunResult:
        metrics = {"ndcg@10": value} if status == "ok" else {}
        return RunResult(status, "d", "M", seed, test=metrics, valid=metrics)

    runs = {(i, s): run(s, value=v[s]) for i, v in enumerate((full, worse)) for s in (0, 1, 2)}
    rows = summarize(combos, runs, [0, 1, 2], reference=0, valid_metric="ndcg@10")
    assert rows[0]["reference"] and rows[0]["ndcg@10_diff"] is None
    row = rows[1]
    assert row["ndcg@10_mean"] == pytest.approx(sum(worse.values()) / 3)
    assert row["ndcg@10_diff"] == pytest.approx((0.67 - 0.93) / 3)
    assert row["ndcg@10_same_sign"] is True
    expected = stats.ttest_rel(list(worse.values()), list(full.values())).pvalue
    assert row["ndcg@10_p"] == pytest.approx(expected)
    # Two seeds: the sign is still checked, no test is run; a failed seed is left out of pairs.
    runs[(1, 2)] = run(2, status="failed")
    row = summarize(combos, runs, [0, 1, 2], 0, "ndcg@10")[1]
    assert row["seeds_ok"] == 2 and row["seeds_failed"] == 1
    assert row["ndcg@10_same_sign"] is True and row["ndcg@10_p"] is None


def test_two_key_grid_runs_every_variant_and_seed(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from bench.tuning import ablate

    grid = _grid(
        tmp_path,
        "# Depth and dropout of SASRec.\n"
        "grid:\n  n_layers: [1, 2]\n  hidden_dropout_prob: [0.2, 0.5]\n",
    )
    # The session's shared results folder (as tests/test_tune.py): its dataset cache is reused.
    out = tmp_path_factory.getbasetemp() / "tuning-out"
    out.mkdir(exist_ok=True)
    lines: list[str] = []
    summary = ablate(
        "SASRec",
        "ml-100k",
        grid,
        seeds=[0, 1],
        out=out,
        settings=FAST,
        epochs=1,
        device="cpu",
        progress=lines.append,
    )
    folder = out / "ablations" / "ml-100k"
    assert summary.markdown == folder / "SASRec.md" and summary.csv == folder / "SASRec.csv"
    assert len(lines) == 8 and not summary.failed
    for variant in range(1, 5):
        for seed in (0, 1):
            assert (folder / "SASRec" / f"variant-{variant}" / f"seed-{seed}.json").is_file()
    # SASRec's defaults (configs/models/SASRec.yaml) are n_layers 2, hidden_dropout_prob 0.5.
    assert summary.reference == 3 and summary.reference_reason == "the model's defaults"
    rows = list(csv.DictReader(summary.csv.open()))
    assert [(r["n_layers"], r["hidden_dropout_prob"]) for r in rows] == [
        ("1", "0.2"),
        ("1", "0.5"),
        ("2", "0.2"),
        ("2", "0.5"),
    ]
    assert [r["reference"] for r in rows] == ["False", "False", "False", "True"]
    assert all(r["seeds_ok"] == "2" and r["ndcg@10_mean"] for r in rows)
    assert all(r["ndcg@10_same_sign"] in ("True", "False") for r in rows[:3])
    text = summary.markdown.read_text()
    assert "Depth and dropout of SASRec." in text
    assert "Reference (full model): variant 4 (n_layers=2, hidden_dropout_prob=0.5)" in text
    assert "| 4 (ref) | 2 | 0.5 | 2/2 |" in text


def test_reference_falls_back_to_first_combination(tmp_path: Path) -> None:
    from bench.preflight import preflight
    from bench.tuning.ablation import find_reference, variants

    (base,) = preflight(["SASRec"], "ml-100k", device="cpu").runs
    index, reason = find_reference(base, variants({"n_layers": [3, 4]}))
    assert index == 0 and reason.startswith("the grid's first combination")
    assert "n_layers=2" in reason
