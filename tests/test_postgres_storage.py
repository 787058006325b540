"""Studies in a real PostgreSQL server: `bench tune --ray-address HEAD:PORT --storage
postgresql://...` with workers on both nodes of a two-node Ray cluster (tests/cluster.py)
reporting into the database, the driver killed with SIGKILL mid-study and resumed, then `bench
dashboard` on the same URL.

The server runs on loopback as an unprivileged account (tests/servers.py). Skipped, saying why,
where PostgreSQL is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import RayCluster, ray_cluster_fixture  # noqa: F401
from tests.helpers import ROOT
from tests.servers import PostgresServer, dashboard_server, postgres_fixture  # noqa: F401

pytestmark = pytest.mark.slow

TRIALS = 4
LR_SPACE = "learning_rate: {type: float, low: 1.0e-3, high: 2.0e-2}\n"
TINY_SASREC = {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 10}


def test_plain_postgresql_url_opens_through_the_locked_driver(postgres: PostgresServer) -> None:
    """SQLAlchemy picks psycopg (3) for a plain postgresql:// URL: it must be installed."""
    import optuna

    from bench.tuning.storage import open_storage

    url = postgres.create_database("plain_url")
    storage = open_storage(url)
    assert storage.engine.dialect.driver == "psycopg"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert optuna.load_study(study_name="s", storage=storage).best_value == 0.5
    storage.engine.dispose()


def _mid_study(storage, study: str) -> bool:
    """A trial is complete and another is running: a kill now may fall anywhere, even between
    the driver writing a trial's result and telling the study (the resume adopts such a trial)."""
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:  # the driver has not created it yet
        return False
    states = {t.state.name for t in storage.get_all_trials(study_id, deepcopy=False)}
    return {"COMPLETE", "RUNNING"} <= states


def test_study_in_postgres_survives_a_sigkilled_driver_and_shows_in_the_dashboard(
    postgres: PostgresServer, ray_cluster: RayCluster, tiny_sequences: Path, tmp_path: Path
) -> None:
    import optuna

    url = postgres.create_database("studies")
    space = tmp_path / "space.yaml"
    space.write_text(LR_SPACE)
    out = tmp_path / "out"
    sets = [x for key, value in TINY_SASREC.items() for x in ("--set", f"{key}={value}")]
    command = [
        sys.executable, "-m", "bench", "tune", "--model", "SASRec", "--dataset", "tiny",
        "--data-dir", str(tiny_sequences), "--trials", str(TRIALS),
        "--ray-address", ray_cluster.address,
        "--storage", url, "--study", "pg", "--space", str(space), "--out", str(out),
        "--epochs", "1", "--pruner", "none", "--sampler", "random", "--final-seeds", "none",
        "--device", "cpu", *sets,
    ]  # fmt: skip
    storage = optuna.storages.RDBStorage(url)
    states = optuna.trial.TrialState
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    # Its own session: anything it started is ended below by this process group's id (its Ray
    # tasks end with it: the cluster drops a dead driver's work).
    first = subprocess.Popen(
        command, cwd=ROOT, env=ray_cluster.env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not _mid_study(storage, "pg"):  # then kill it
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "never a trial complete and others training"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # none left
            os.killpg(first.pid, signal.SIGKILL)
        log.close()
    study_id = storage.get_study_id_from_name("pg")
    before = {t.number: t for t in storage.get_all_trials(study_id)}
    completed = {n: t.value for n, t in before.items() if t.state == states.COMPLETE}
    running = sorted(n for n, t in before.items() if t.state == states.RUNNING)
    assert completed and running

    second = subprocess.Popen(
        command, cwd=ROOT, env=ray_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr[-3000:]
    assert stdout.count("left RUNNING by a stopped driver") == len(running)

    after = storage.get_all_trials(study_id)
    by_number = {t.number: t for t in after}
    for number, value in completed.items():  # completed trials kept as they were
        assert by_number[number].state == states.COMPLETE and by_number[number].value == value
    for number in running:
        killed = by_number[number]
        retries = [t for t in after if t.user_attrs.get("retry_of") == number]
        if killed.state == states.COMPLETE:  # recorded before the kill: adopted, not run again
            assert not retries and not killed.user_attrs.get("interrupted")
            continue
        # Killed while it trained: failed, marked, and run again exactly once. Killed inside
        # ``ask``, before its parameter was drawn: failed, marked, and a fresh trial in its place.
        assert killed.state == states.FAIL and killed.user_attrs["interrupted"] is True
        assert len(retries) == (1 if killed.params else 0)
        assert all(retry.params == killed.params for retry in retries)
    counted = [t for t in after if not t.user_attrs.get("interrupted")]
    assert len(counted) == TRIALS and all(t.state == states.COMPLETE for t in counted)
    # One result record per counted trial, none for a killed one: nothing lost, nothing twice.
    recorded = {
        json.loads(path.read_text())["trial"]["number"]
        for path in (out / "studies" / "pg").glob("trial-*/result.json")
    }
    assert recorded == {t.number for t in counted}
    # Ray workers on both nodes, not the drivers, trained the trials and reported into the
    # database.
    workers = {t.user_attrs["pid"] for t in counted}
    assert len(workers) >= 2 and not workers & {first.pid, second.pid, os.getpid()}
    assert {t.user_attrs["ray_node_id"] for t in counted} == set(ray_cluster.node_ids.values())
    assert all(t.intermediate_values for t in counted)
    storage.engine.dispose()

    with dashboard_server(url) as dashboard:
        (summary,) = dashboard.get("/api/studies")["study_summaries"]
        assert summary["study_name"] == "pg"
        shown = dashboard.get(f"/api/studies/{summary['study_id']}?after=0")["trials"]
        assert {t["number"]: t["state"] for t in shown} == {
            t.number: t.state.name.capitalize() for t in after
        }
        assert {t["number"]: t["values"] for t in shown if t["state"] == "Complete"} == {
            t.number: [t.value] for t in counted
        }
