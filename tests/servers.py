"""Real servers for the tests: a PostgreSQL server on loopback, ``bench dashboard``, and headless
Chromium (the system's, driven by Playwright).

A test module imports the fixtures it uses (``from tests.servers import postgres_fixture``: the
fixture is named ``postgres``). Each fixture skips its tests, saying what to install, where the
machine lacks the program (``.ci/run`` installs both on CI). Everything started here is stopped
by its own process id.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

# PostgreSQL refuses to run as root; as root the server runs as this account, which Debian's
# postgresql package creates.
POSTGRES_ACCOUNT = "postgres"
# Chromium's own switches for a headless run on a machine with no network and no screen: no
# sandbox (root), no GPU, no first-run dialogs, and none of the background connections (updates,
# sync, components) that a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """Stop ``process`` (by its pid) with ``sig``, then SIGKILL if it has not ended in ``wait``."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=wait)


# --- PostgreSQL ----------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: on the PATH, or Debian's versioned folder
    (``/usr/lib/postgresql/<version>/bin``, which Debian keeps off the PATH); the newest wins."""
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).resolve().parent / "postgres").is_file():
        return Path(on_path).resolve().parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    """A running server: ``url`` reaches database ``database`` as superuser ``user``."""

    host: str
    port: int
    user: str
    database: str
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def create_database(self, name: str) -> str:
        """A new, empty database on this server; returns its URL."""
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=self.database, autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"


@contextlib.contextmanager
def postgres_server(startup_timeout: float = 60) -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL server on 127.0.0.1 (a free port, unix sockets and data in a
    new temporary folder), as an unprivileged account when this process is root; trust
    authentication on loopback for superuser ``bench``. Stopped (fast shutdown) and deleted on
    exit. Skips the calling test where the server binaries or the account are missing."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not found: install postgresql")
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(POSTGRES_ACCOUNT)
        except KeyError:
            pytest.skip(
                f"PostgreSQL refuses to run as root and there is no {POSTGRES_ACCOUNT!r} account "
                "to run it as: install postgresql (Debian's package creates it)"
            )
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    # Not pytest's tmp_path: its parents are private to root, and the server's account must
    # reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    data, sockets, log = folder / "data", folder / "sockets", folder / "server.log"
    sockets.mkdir()
    if as_user:
        for path in (folder, sockets):
            os.chown(path, as_user["user"], as_user["group"])
    env = {**os.environ, "LC_ALL": "C", "HOME": str(folder)}
    process = None
    try:
        initdb = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "bench", "--auth=trust",
             "--encoding=UTF8", "--no-locale", "--no-sync"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=120, **as_user,
        )  # fmt: skip
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
        port = free_port()
        with open(log, "w") as log_file:
            process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
                 # A test server: durability is not wanted, speed on a shared CPU is.
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT, **as_user,
            )  # fmt: skip
        server = PostgresServer("127.0.0.1", port, "bench", "postgres", process, log)
        _wait_for_postgres(server, startup_timeout)
        yield server
    finally:
        if process is not None:
            stop_process(process, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_postgres(server: PostgresServer, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"postgres exited:\n{server.log.read_text()[-3000:]}")
        try:
            with psycopg.connect(
                host=server.host, port=server.port, user=server.user, dbname=server.database
            ):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"postgres did not accept connections: {exc}") from exc
            time.sleep(0.2)


@pytest.fixture(scope="module", name="postgres")
def postgres_fixture() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the module's tests (each test makes its own database)."""
    with postgres_server() as server:
        yield server


# --- bench dashboard -----------------------------------------------------------------------


@dataclass
class Dashboard:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen

    def get(self, path: str) -> Any:
        """The JSON the dashboard's API answers at ``path``."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            assert response.status == 200
            return json.loads(response.read())


@contextlib.contextmanager
def dashboard_server(storage: str, timeout: float = 90) -> Iterator[Dashboard]:
    """``bench dashboard --storage STORAGE`` on a free loopback port, as a user starts it; yields
    once its API answers, and stops it (by pid) on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "dashboard", "--storage", storage, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dashboard = Dashboard(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"bench dashboard exited:\n{process.stdout.read()}"
            try:
                dashboard.get("/api/studies")
                break
            except OSError:
                assert time.monotonic() < deadline, "bench dashboard did not answer"
                time.sleep(0.3)
        yield dashboard
    finally:
        stop_process(process)
        process.stdout.close()


# --- Chromium ------------------------------------------------------------------------------


def chromium_executable() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module", name="chromium")
def chromium_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Playwright browser context in the system's headless Chromium, with a fresh profile.
    Playwright never downloads a browser here: it starts the one given by path."""
    executable = chromium_executable()
    if executable is None:
        pytest.skip("Chromium not found (chromium, chromium-browser): install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()
