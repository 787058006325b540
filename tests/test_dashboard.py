"""bench dashboard: optuna-dashboard served on loopback over a study storage."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.errors import BenchError
from tests.helpers import ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _journal_with_a_study(path: Path) -> None:
    import optuna

    from bench.tuning.storage import open_storage

    study = optuna.create_study(study_name="demo", storage=open_storage(str(path)))
    for value in (0.1, 0.2):
        trial = study.ask()
        trial.report(value / 2, 0)
        study.tell(trial, value)


def test_dashboard_answers_on_loopback(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    _journal_with_a_study(journal)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "dashboard",
            "--storage",
            str(journal),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    status, body = r.status, json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer"
                time.sleep(0.3)
        assert status == 200
        assert [s["study_name"] for s in body["study_summaries"]] == ["demo"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_refuses_a_missing_storage_and_a_busy_port(tmp_path: Path) -> None:
    from bench.tuning.dashboard import make_dashboard_server

    with pytest.raises(BenchError, match="no study storage at"):
        make_dashboard_server(tmp_path / "missing.log")
    journal = tmp_path / "journal.log"
    _journal_with_a_study(journal)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(BenchError, match="cannot serve on 127.0.0.1"):
            make_dashboard_server(journal, port=busy.getsockname()[1])
