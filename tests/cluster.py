"""A Ray cluster of two nodes on this machine, for the tests: a head and a second node, each
``ray start --block`` in a process session of its own, one CPU each, reached on loopback.

The second node also holds a custom resource, ``fake_gpu: 1``, which stands in for a GPU on a
CPU-only machine: a driver started with ``BENCH_RAY_GPU_RESOURCE=fake_gpu`` (test-only, see
:mod:`bench.executor`) asks for it instead of ``num_gpus``, so GPU placement can be checked.

Ray 2.60 turns token authentication on when it finds a token (``~/.ray/auth_token``, written by
any earlier ``ray.init()`` on the machine), and a driver given an explicit address does not turn
it on by itself: every process here (nodes and drivers) gets ``RAY_AUTH_MODE=token`` and a fresh
token of this cluster's own in its environment (:attr:`RayCluster.env`). Nodes are stopped by
their process group ids, never with ``ray stop`` (which stops every Ray on the machine, other
users' too). A module imports the fixture it uses (``from tests.cluster import
ray_cluster_fixture``: the fixture is named ``ray_cluster``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.servers import free_port

FAKE_GPU = "fake_gpu"
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's whole process group (its raylet, agents and the `ray start`); its
        Ray workers end with their raylet."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, grace: float = 5) -> None:
        self.kill(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)  # what SIGTERM left (Ray's GCS outlives it for a while)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


@dataclass
class RayCluster:
    address: str  # 127.0.0.1:PORT
    env: dict[str, str]  # what a driver (or node) of this cluster needs in its environment
    folder: Path  # Ray's temporary folder and the nodes' logs
    head: RayNode
    second: RayNode | None = None
    node_ids: dict[str, str] = field(default_factory=dict)  # node name -> Ray's node id

    def start_second(self, timeout: float = 120) -> None:
        """(Re)start the second node: one CPU and one fake GPU; wait until it has joined."""
        before = {n["NodeID"] for n in self.nodes()}
        self.second = _start_node(
            "second",
            ["--address", self.address, *_node_ports(), "--resources", json.dumps({FAKE_GPU: 1})],
            self.env,
            self.folder,
            timeout,
        )
        deadline = time.monotonic() + timeout
        while True:  # a killed second node may still count as alive for a while: a new one
            alive = [n for n in self.nodes() if n["Alive"]]
            joined = [n for n in alive if FAKE_GPU in n["Resources"] and n["NodeID"] not in before]
            head = [n for n in alive if FAKE_GPU not in n["Resources"]]
            if joined and head:
                self.node_ids = {"head": head[0]["NodeID"], "second": joined[0]["NodeID"]}
                return
            assert time.monotonic() < deadline, f"the second Ray node never joined: {alive}"
            time.sleep(1)

    def nodes(self) -> list[dict]:
        """Ray's view of the cluster's nodes (NodeID, Alive, Resources), from a short driver."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False); "
            "print(json.dumps([{k: n[k] for k in ('NodeID', 'Alive', 'Resources')} "
            "for n in ray.nodes()]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


def _node_ports() -> list[str]:
    """Free ports for what a node would otherwise bind at fixed defaults (another Ray on this
    machine may hold those)."""
    return [
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
    ]  # fmt: skip


def _start_node(
    name: str, args: list[str], env: dict[str, str], folder: Path, timeout: float
) -> RayNode:
    log = folder / f"{name}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
             "--object-store-memory", str(80 * 1024**2), *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped by that id alone
        )  # fmt: skip
    node = RayNode(name, process, log)
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise AssertionError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    return node


@contextlib.contextmanager
def two_node_cluster(timeout: float = 120) -> Iterator[RayCluster]:
    """A head and a second node on this machine (see the module's docstring); both stopped,
    and Ray's temporary folder removed, on exit."""
    # Short: Ray's socket paths under it must stay within the system's limit.
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # The drivers and workers use this virtual environment as it is (no `uv run` hook).
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    cluster = None
    try:
        head = _start_node(
            "head",
            ["--head", "--port", str(port), "--temp-dir", str(folder / "ray"),
             "--include-dashboard", "false", "--dashboard-port", str(free_port()),
             "--ray-client-server-port", str(free_port()), *_node_ports()],
            env,
            folder,
            timeout,
        )  # fmt: skip
        cluster = RayCluster(f"127.0.0.1:{port}", env, folder, head)
        cluster.start_second(timeout)
        yield cluster
    finally:
        if cluster is not None:
            for node in (cluster.second, cluster.head):
                if node is not None:
                    node.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", name="ray_cluster")
def ray_cluster_fixture() -> Iterator[RayCluster]:
    """Two Ray nodes for the module's tests; a test that kills the second node restarts it
    (``ray_cluster.start_second()``) or runs last."""
    with two_node_cluster() as cluster:
        yield cluster
