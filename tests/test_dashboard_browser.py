"""`bench dashboard` as a person sees it: the single-page app loaded in headless Chromium (the
system's, driven by Playwright), after it has fetched the study from the server.

What the page holds: optuna-dashboard draws the history with Plotly, which keeps each trace's
points on the plot element (``#plot-history``'s ``data``) and draws one SVG marker per point; the
trial list is one button per trial, "Trial N" and its state. Skipped, saying why, where Chromium
is not installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.servers import chromium_fixture, dashboard_server  # noqa: F401

pytestmark = pytest.mark.slow

# Trial number -> objective value; None: pruned after reporting PRUNED_AT at step 0.
TRIALS = {0: 0.1234, 1: 0.3456, 2: None, 3: 0.2345}
PRUNED_AT = 0.05

HISTORY_DRAWN = """() => {
    const plot = document.getElementById('plot-history');
    return plot !== null && Array.isArray(plot.data) && plot.data.some(t => t.y && t.y.length);
}"""
HISTORY_TRACES = """() => document.getElementById('plot-history').data.map(
    t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))"""
DRAWN_MARKERS = """() => Array.from(
    document.querySelectorAll('#plot-history .scatterlayer .trace'),
    t => t.querySelectorAll('path.point').length)"""


def _finished_study(journal: Path) -> None:
    """A finished study as `bench tune` leaves one: three complete trials and a pruned one."""
    import optuna

    from bench.tuning.storage import open_storage

    study = optuna.create_study(
        study_name="SASRec-tiny", storage=open_storage(str(journal)), direction="maximize"
    )
    space = {"learning_rate": optuna.distributions.FloatDistribution(1e-3, 2e-2, log=True)}
    for value in TRIALS.values():
        trial = study.ask(space)
        if value is None:
            trial.report(PRUNED_AT, 0)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.report(value, 0)
            study.tell(trial, value)


def test_browser_shows_the_trials_and_the_history_plot_holds_their_values(
    chromium, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.log"
    _finished_study(journal)
    with dashboard_server(str(journal)) as dashboard:
        (summary,) = dashboard.get("/api/studies")["study_summaries"]
        study_page = f"{dashboard.url}/dashboard/studies/{summary['study_id']}"
        page = chromium.new_page()
        try:
            page.goto(study_page)
            page.wait_for_function(HISTORY_DRAWN, timeout=60_000)
            traces = {
                t["name"].removesuffix(" of SASRec-tiny"): t for t in page.evaluate(HISTORY_TRACES)
            }
            # Every trial at its value; the pruned one at the last value it reported.
            objective = traces["Objective 0"]
            assert objective["x"] == list(TRIALS)
            assert objective["y"] == [PRUNED_AT if v is None else v for v in TRIALS.values()]
            # The best-so-far line over the complete trials only.
            assert traces["Best Value"]["x"] == [0, 1, 3]
            assert traces["Best Value"]["y"] == [0.1234, 0.3456, 0.3456]
            # ...and drawn: one SVG marker per trial.
            assert len(TRIALS) in page.evaluate(DRAWN_MARKERS)

            page.goto(f"{study_page}/trials")
            page.get_by_text(f"{len(TRIALS)} Trials").wait_for(timeout=60_000)
            listed = page.get_by_role("button").filter(has_text=re.compile(r"^Trial \d+"))
            shown = {}
            for text in listed.all_inner_texts():
                name, state = text.splitlines()[:2]
                shown[int(name.removeprefix("Trial "))] = state
            assert shown == {n: "Pruned" if v is None else "Complete" for n, v in TRIALS.items()}
        finally:
            page.close()
