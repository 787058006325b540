"""Figures and the markdown report, from synthetic results and from real ml-100k runs."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import api, leaderboard, plots
from bench.cli import app
from bench.contract import parse_result
from bench.errors import BenchError
from bench.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_figures(paths: list[Path]) -> None:
    from matplotlib.image import imread

    png, svg = paths
    assert png.suffix == ".png" and svg.suffix == ".svg"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert imread(png).size > 0
    assert "<svg" in svg.read_text()
    assert not list(png.parent.glob("*.tmp"))


def _result(model: str, seed: int, valid_scores: list[float], test: dict[str, float]):
    """A finished run on dataset "d" with these validation scores (epochs from 0)."""
    record = {
        "status": "ok",
        "dataset": "d",
        "model": model,
        "seed": seed,
        "valid_metric": "ndcg@10",
        "epochs": [{"epoch": e, "valid_score": v} for e, v in enumerate(valid_scores)],
        "test": test,
        "timing": {"train_seconds": 1.0},
    }
    return parse_result(record)


def _synthetic_results(models=(("A", 1.0), ("B", 0.5))):
    results = []
    for model, scale in models:
        for seed in (0, 1):
            epochs = 3 if seed == 0 else 2  # early stopping: curves align by epoch
            scores = [scale * (e + 1) / 10 + seed / 100 for e in range(epochs)]
            test = {"ndcg@5": scale * 0.1, "ndcg@10": scale * 0.2, "hit@10": scale * 0.3}
            results.append(_result(model, seed, scores, test))
    return results


def test_figures_are_written_as_png_and_svg(tmp_path):
    results = _synthetic_results()
    table = leaderboard.build(results)
    _check_figures(plots.learning_curves(results, tmp_path))
    _check_figures(plots.metric_bars(table, "ndcg@10", tmp_path))
    _check_figures(plots.metric_at_k(table, tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bar_ndcg_at_10.png",
        "bar_ndcg_at_10.svg",
        "learning_curves.png",
        "learning_curves.svg",
        "metric_at_k.png",
        "metric_at_k.svg",
    ]


def test_figures_of_many_models_keep_their_plots_and_list_them_below(tmp_path):
    # 30 models' legend inside the axes squeezed them to nothing (matplotlib warned); now the
    # legend goes below in columns and the figure grows to hold it.
    from matplotlib.image import imread

    results = _synthetic_results([(f"model-{i}", 1.0 / (i + 1)) for i in range(30)])
    table = leaderboard.build(results)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = [plots.learning_curves(results, tmp_path), plots.metric_at_k(table, tmp_path)]
    few = plots.learning_curves(_synthetic_results(), tmp_path / "few")
    for png, _svg in paths:
        assert imread(png).shape[0] > imread(few[0]).shape[0]


def test_learning_curves_of_a_deterministic_one_epoch_model_over_seeds(tmp_path):
    # Pop, EASE and the like validate once, with the same score for every seed; the mean of
    # three equal floats can round past them (0.1 here: one ulp above, 0.7: one below), which
    # made the range bar negative and matplotlib refuse the whole report.
    results = []
    for model, score in (("Pop", 0.1), ("EASE", 0.7)):
        assert pd.Series([score] * 3).mean() != score  # the rounding this test is about
        results += [_result(model, seed, [score], {"ndcg@10": score}) for seed in (0, 1, 2)]
    _check_figures(plots.learning_curves(results, tmp_path))


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> Path:
    """Pop and BPR, two seeds each, two epochs, on ml-100k (a few seconds per run)."""
    out = tmp_path_factory.mktemp("runs")
    summary = api.run(["Pop", "BPR"], "ml-100k", seeds=[0, 1], epochs=2, out=out, device="cpu")
    assert not summary.failed
    return out


def test_report_from_real_runs(real_runs):
    path = write_report(real_runs, "ml-100k", baseline="BPR")
    assert path == real_runs / "reports" / "ml-100k" / "report.md"
    text = path.read_text()
    assert text.startswith("# Benchmark report: ml-100k")
    # Empty regime (not sequential) and noise (BPR's gap to Pop exceeds both seed stds) cells.
    assert re.search(r"\| Pop \| traditional \|  \| 2 \|  \| \*\*0\.\d{4} ± 0\.\d{4}\*\*", text)
    assert re.search(r"\| BPR \| general \|  \| 2 \|  \| _0\.\d{4} ± 0\.\d{4}_", text)
    assert "## Significance (ndcg@10)" in text and "| BPR | Pop (best) | ndcg@10 | 943 |" in text
    assert "| Pop | BPR (baseline) | ndcg@10 | 943 |" in text
    assert "## Training time" in text and "## Provenance" in text
    links = re.findall(r"\]\((figures/[^)]+)\)", text)
    assert {Path(link).suffix for link in links} == {".png", ".svg"} and len(links) == 6
    for link in links:
        assert (path.parent / link).stat().st_size > 0
    _check_figures([path.parent / "figures" / "learning_curves.png", path.parent / link])
    # The significance table and the provenance record are the leaderboard's files, linked,
    # not copied; the report wrote the leaderboard with its own baseline, so they agree.
    record = "[`leaderboard/ml-100k.provenance.json`](../../leaderboard/ml-100k.provenance.json)"
    assert f"Full record: {record}." in text
    table = "[`leaderboard/ml-100k.significance.csv`](../../leaderboard/ml-100k.significance.csv)"
    assert f"All metric@k: {table}." in text
    linked = re.findall(r"\]\((\.\./\.\./leaderboard/[^)]+)\)", text)
    assert linked and all((path.parent / target).is_file() for target in linked)
    assert sorted(p.name for p in path.parent.iterdir()) == ["figures", "report.md"]
    sig = pd.read_csv(real_runs / "leaderboard" / "ml-100k.significance.csv")
    assert set(sig["reference"]) == {"Pop", "BPR"} and (sig["n_users"] == 943).all()
    assert not list(path.parent.rglob("*.tmp"))
    assert "Rebuilt by `bench report --results" in text
    board_md = (real_runs / "leaderboard" / "ml-100k.md").read_text()
    assert "## Significance (ndcg@10)" in board_md and "BPR (baseline)" in board_md
    provenance = json.loads((real_runs / "leaderboard" / "ml-100k.provenance.json").read_text())
    assert provenance["rebuild_command"].startswith("bench leaderboard --results")
    assert provenance["rebuild_command"].endswith("--baseline BPR")


def test_cli_report_and_leaderboard_baseline(real_runs):
    runner = CliRunner()
    done = runner.invoke(app, ["report", "--dataset", "ml-100k", "--results", str(real_runs)])
    assert done.exit_code == 0, done.output
    assert "report.md" in done.output
    done = runner.invoke(app, ["leaderboard", "--results", str(real_runs), "--baseline", "BPR"])
    assert done.exit_code == 0, done.output
    sig = pd.read_csv(real_runs / "leaderboard" / "ml-100k.significance.csv")
    assert "baseline" in set(sig["role"])
    bad = runner.invoke(
        app, ["report", "--dataset", "ml-100k", "--results", str(real_runs), "--baseline", "Nope"]
    )
    assert isinstance(bad.exception, BenchError) and "Nope" in str(bad.exception)


def test_cli_test_option_picks_the_test_that_decides_the_markers(real_runs):
    runner = CliRunner()
    results = ["--results", str(real_runs)]
    done = runner.invoke(app, ["leaderboard", *results, "--test", "wilcoxon"])
    assert done.exit_code == 0, done.output
    board = (real_runs / "leaderboard" / "ml-100k.md").read_text()
    assert "(Wilcoxon signed-rank test on per-user values, Holm-adjusted" in board
    report_args = ["report", "--dataset", "ml-100k", *results]
    done = runner.invoke(app, [*report_args, "--test", "wilcoxon"])
    assert done.exit_code == 0, done.output
    folder = real_runs / "reports" / "ml-100k"
    assert "the Wilcoxon signed-rank test decides the markers" in (folder / "report.md").read_text()
    provenance = json.loads((real_runs / "leaderboard" / "ml-100k.provenance.json").read_text())
    assert provenance["statistics"]["marker_test"] == "wilcoxon"
    assert provenance["rebuild_command"].endswith("--test wilcoxon")
    bad = runner.invoke(app, [*report_args, "--test", "sign"])
    assert isinstance(bad.exception, BenchError) and "sign" in str(bad.exception)
    # Without the option: the t-test, for the report and the leaderboard.
    assert runner.invoke(app, report_args).exit_code == 0
    assert "(paired t-test on per-user values" in (folder / "report.md").read_text()
    assert runner.invoke(app, ["leaderboard", *results]).exit_code == 0
    board = (real_runs / "leaderboard" / "ml-100k.md").read_text()
    assert "(paired t-test on per-user values" in board


def test_report_without_results_is_a_bench_error(tmp_path):
    with pytest.raises(BenchError, match="no results"):
        write_report(tmp_path, "ml-100k")


def test_kl_curves_plot_every_kl_term_and_skip_models_without_one(tmp_path):
    def run(model, seed, kls):
        epochs = [
            {"epoch": i, "valid_score": 0.1, "loss_terms": {"rec": 1.0, **terms}}
            for i, terms in enumerate(kls)
        ]
        record = {"status": "ok", "dataset": "d", "model": model, "seed": seed, "epochs": epochs}
        return parse_result(record)

    results = [
        run("Hybrid", 0, [{"kl1": 5.0, "kl2": 4.0}, {"kl1": 1.0, "kl2": 0.5}]),
        run("Hybrid", 1, [{"kl1": 7.0, "kl2": 6.0}, {"kl1": 3.0, "kl2": 1.5}]),
        run("SASRec", 0, [{}, {}]),
    ]
    terms = plots._kl_terms(results)
    assert set(terms) == {"Hybrid"}
    means = terms["Hybrid"].groupby(["term", "epoch"])["value"].mean()
    assert means[("kl1", 1)] == 2.0 and means[("kl2", 0)] == 5.0
    paths = plots.kl_curves(results, tmp_path)
    assert sorted(p.suffix for p in paths) == [".png", ".svg"]
    assert plots.kl_curves(results[2:], tmp_path / "none") is None


def test_kl_curves_give_each_model_one_colour_and_each_term_one_dash():
    # A ten-colour cycle over 15 curves gave two models the same colour (the converged Beauty
    # board's ContrastVAE-ce and -dirichlet); now colour is the model and the dash is the term.
    def run(model):
        epochs = [{"epoch": i, "loss_terms": {"kl1": 2.0 - i, "kl2": 1.0}} for i in range(2)]
        return parse_result(
            {"status": "ok", "dataset": "d", "model": model, "seed": 0, "epochs": epochs}
        )

    fig = plots.kl_figure([run(f"model-{i}") for i in range(12)])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 24
    colour = {}
    for line in lines:
        model, term, *_ = line.get_label().split()
        colour.setdefault(model, set()).add(line.get_color())
        assert line.get_linestyle() == ("-" if term == "kl1" else "--")
    assert all(len(c) == 1 for c in colour.values())
    assert len({next(iter(c)) for c in colour.values()}) == 12


def test_a_legend_of_long_names_below_the_plot_stays_inside_the_figure():
    fig = plots._figure()
    ax = fig.add_subplot()
    plots._line_styles(ax)
    for i in range(12):
        ax.plot([0, 1], [i, i], label=f"HybridContrastVAE-dirichlet-ce-variant-{i} kl1 (3 seeds)")
    legend = plots._legend(fig, ax, fontsize="x-small")
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
    assert 0 <= box.y0 and box.y1 <= fig.bbox.height
    assert box.y1 < ax.get_window_extent().y0  # below the axes, not over them


def test_training_time_counts_a_resumed_runs_earlier_sittings(tmp_path):
    import dataclasses

    from bench.contract import Timing, write_result

    for result in _synthetic_results(models=(("A", 1.0),)):
        earlier = 30.0 if result.seed == 1 else 0.0
        timing = Timing(train_seconds=10.0, total_seconds=12.0, earlier_train_seconds=earlier)
        write_result(tmp_path, dataclasses.replace(result, timing=timing))
    text = write_report(tmp_path, "d").read_text()
    row = next(line for line in text.split("## Training time")[1].splitlines() if "| A |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "25.0 ± 21.2" and cells[-1] == "27.0 ± 21.2"  # fit s, total s


def test_cli_pairs_get_their_own_tests_in_the_report(real_runs):
    runner = CliRunner()
    args = ["report", "--dataset", "ml-100k", "--results", str(real_runs)]
    done = runner.invoke(app, [*args, "--pair", "BPR:Pop"])
    assert done.exit_code == 0, done.output
    folder = real_runs / "reports" / "ml-100k"
    text = (folder / "report.md").read_text()
    section = text.split("## Paired comparisons (ndcg@10)")[1].split("## Training time")[0]
    assert "| BPR | Pop | ndcg@10 | 943 |" in section and "over the pairs listed" in section
    assert "[`pairs.csv`](pairs.csv)" in section
    pairs = pd.read_csv(folder / "pairs.csv")
    assert set(pairs["role"]) == {"pair"} and set(pairs["test"]) == {"t", "wilcoxon"}
    # The same comparison as the board's BPR against Pop (the best): the same numbers.
    sig = pd.read_csv(real_runs / "leaderboard" / "ml-100k.significance.csv")
    key = ["model", "reference", "metric", "test"]
    both = pairs.merge(sig[sig["model"] == "BPR"], on=key, suffixes=("", "_board"))
    assert len(both) == len(pairs) > 0
    for column in ("mean_diff", "ci_low", "ci_high", "p_value"):
        assert both[column].to_numpy() == pytest.approx(both[f"{column}_board"].to_numpy())
    assert "--pair BPR:Pop" in text.split("## Provenance")[1]

    for bad, message in [
        ("BPR", "expected MODEL:REFERENCE"),
        ("BPR:Nope", "paired model 'Nope' is unknown"),
        ("BPR:BPR", "compares a model with itself"),
    ]:
        failed = runner.invoke(app, [*args, "--pair", bad])
        assert isinstance(failed.exception, BenchError) and message in str(failed.exception)
    assert runner.invoke(app, args).exit_code == 0  # without pairs: no section, no file
    assert "Paired comparisons" not in (folder / "report.md").read_text()
    assert not (folder / "pairs.csv").exists()


def test_the_report_says_how_the_metric_moved_after_each_early_stopped_runs_best(tmp_path):
    import dataclasses

    from bench.contract import write_result
    from bench.report import trend_after_best

    def run(model: str, seed: int, scores: list[float]):
        (base,) = [r for r in _synthetic_results(models=((model, 1.0),)) if r.seed == 0]
        epochs = [
            dataclasses.replace(base.epochs[0], epoch=e, valid_score=v)
            for e, v in enumerate(scores)
        ]
        best = max(range(len(scores)), key=scores.__getitem__)
        return dataclasses.replace(
            base, seed=seed, epochs=epochs, best_epoch=best, stop_reason="early_stopping"
        )

    # Best 0.5 at epoch 1, then a fall of 0.01 an epoch: -0.1 per 10 epochs, -20% of the best.
    falling = run("A", 0, [0.3, 0.5, 0.45, 0.44, 0.43, 0.42])
    assert trend_after_best(falling) == pytest.approx(-0.2)
    # A rise through noise after an early peak: the run was still improving when it stopped.
    rising = run("A", 1, [0.2, 0.4, 0.30, 0.32, 0.31, 0.33, 0.35])
    assert trend_after_best(rising) > 0
    assert trend_after_best(run("A", 2, [0.1, 0.2, 0.15])) is None  # too few after the best
    assert trend_after_best(falling, bigger=False) == pytest.approx(0.2)  # e.g. a loss
    for result in (falling, rising):
        write_result(tmp_path, result)
    write_result(tmp_path, dataclasses.replace(run("B", 0, [0.1, 0.2]), stop_reason="epoch_limit"))
    text = write_report(tmp_path, "d").read_text()
    section = text.split("## How early stopping ended the runs")[1].split("##")[0]
    row = next(line for line in section.splitlines() if line.startswith("| A |"))
    assert "-20.0" in row and "1 of 2" in row
    assert "| B |" not in section  # ran to its epoch limit
