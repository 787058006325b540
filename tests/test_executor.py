"""bench.executor: where runs go (this process, a pool of worker processes, Ray), the GPU share
each gets, and a run whose worker was lost submitted again, from its checkpoint, at most twice.
(Runs on a Ray cluster of two nodes: tests/test_cluster.py.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import api, executor, runner
from bench.contract import RunOptions
from bench.errors import BenchError
from bench.executor import (
    Executor,
    InlineExecutor,
    PoolExecutor,
    RunOutcome,
    RunRequest,
    make_executor,
    pool_gpus,
    runs_per_node,
)
from tests.helpers import TINY


def test_one_worker_runs_in_this_process_and_more_in_a_pool(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # neither imports Ray
    assert isinstance(make_executor(), InlineExecutor) and make_executor(1).in_process
    pool = make_executor(3)
    assert isinstance(pool, PoolExecutor) and pool.capacity == 3 and not pool.in_process
    pool.close()
    with pytest.raises(BenchError, match="--workers must be at least 1"):
        make_executor(0)
    with pytest.raises(BenchError, match="--gpus-per-run must be >= 0"):
        make_executor(2, -1)
    # No GPU share: the runs train on the CPU, and a GPU device is refused.
    assert make_executor(1, 0).device_for("auto") == "cpu"
    with pytest.raises(BenchError, match="--device cuda needs --gpus-per-run > 0"):
        make_executor(1, 0).device_for("cuda")
    assert make_executor(1).device_for("cuda:1") == "cuda:1"


def test_pool_workers_are_pinned_to_gpus_by_their_share():
    assert pool_gpus(3, None, 2) == [None, None, None]
    assert pool_gpus(4, 0.5, 1) == [0, 0]  # two a GPU on one GPU: two workers, not four
    assert pool_gpus(4, 0.5, 2) == [0, 1, 0, 1]
    assert pool_gpus(3, 1, 2) == [0, 1]
    assert pool_gpus(2, 0.3, 1) == [0, 0]  # three would fit; two asked
    with pytest.raises(BenchError, match="one GPU at most"):
        pool_gpus(2, 2, 4)
    with pytest.raises(BenchError, match="no CUDA device is visible"):
        pool_gpus(2, 0.5, 0)


def test_runs_per_node_counts_cpus_and_gpu_shares():
    assert runs_per_node({"CPU": 4.0}, 0, "GPU") == 4
    assert runs_per_node({"CPU": 16.0, "GPU": 1.0}, 0.25, "GPU") == 4
    assert runs_per_node({"CPU": 2.0, "GPU": 2.0}, 0.25, "GPU") == 2  # CPUs bound it
    assert runs_per_node({"CPU": 1.0}, 0.5, "GPU") == 0  # no GPU on this node
    assert runs_per_node({"CPU": 2.0, "fake_gpu": 1.0}, 0.5, "fake_gpu") == 2


class _Losing(Executor):
    """Loses the worker of its runs ``losses`` times, then finishes them."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses
        self.started: list[RunRequest] = []

    @property
    def capacity(self) -> int:
        return 1

    def _start(self, request, trial, epoch_hook):
        self.started.append(request)

    def _collect(self, timeout):
        request = self.started.pop(0)
        if self.losses:
            self.losses -= 1
            return [(request, executor._Lost(f"node died ({self.losses})"))]
        return [(request, RunOutcome("ok", attempts=request.attempt, lost=request.lost))]

    def _stop_all(self):
        self.started.clear()


def _options(**kwargs) -> RunOptions:
    return RunOptions(dataset="tiny", model="Pop", **kwargs)


def test_a_lost_run_is_submitted_again_with_resume_at_most_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    losing = _Losing(losses=2)
    told: list[tuple[int, str]] = []
    losing.on_requeue = lambda request, why: told.append((request.attempt, why))
    relative = _options(data_dir="data", cache_dir=Path("out/cache"))
    losing.submit(RunRequest("r", relative, log_file=Path("r.log")))
    ((request, outcome),) = losing.wait()
    assert outcome.state == "ok" and request.attempt == 3 and request.options.resume
    # A worker elsewhere (a Ray node's own folder) gets the paths as the driver resolves them.
    assert request.options.data_dir == str(tmp_path / "data")
    assert request.options.cache_dir == tmp_path / "out" / "cache"
    assert request.log_file == tmp_path / "r.log"
    assert told == [(2, "node died (1)"), (3, "node died (0)")]
    assert outcome.lost == ["node died (1)", "node died (0)"] and losing.pending() == 0

    losing = _Losing(losses=3)  # the third loss is the last: failed, with one result
    losing.submit(RunRequest("r", _options(name="Pop-x"), command="bench run ..."))
    ((request, outcome),) = losing.wait()
    assert outcome.state == "failed" and outcome.attempts == 3 and len(outcome.lost) == 3
    result = outcome.result
    assert result.status == "failed" and result.model == "Pop-x" and result.stop_reason == "failed"
    assert result.error.type == "WorkerLost" and "lost its worker 3 times" in outcome.error
    assert result.command == "bench run ..." and losing.pending() == 0


def test_bench_run_without_workers_runs_here_with_no_pool_and_no_ray(tiny_sequences, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(executor, "PoolExecutor", None)  # a pool would fail
    ran_in: list[int] = []
    execute = runner.execute

    def spy(*args, **kwargs):
        ran_in.append(os.getpid())
        return execute(*args, **kwargs)

    monkeypatch.setattr(runner, "execute", spy)
    summary = api.run(["Pop"], "tiny", data_dir=tiny_sequences, out=tiny_sequences / "out")
    assert summary.results[0].ok and ran_in == [os.getpid()]


def test_bench_run_with_workers_runs_in_worker_processes(tiny_sequences, monkeypatch):
    """``--workers 2``: the run happens in a spawned worker process (this process's ``execute``
    is broken here, the worker's is not), and this process writes its result and the
    leaderboard."""

    def broken(*_args, **_kwargs):
        raise AssertionError("ran in the driver")

    monkeypatch.setattr(runner, "execute", broken)
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tiny_sequences / "out"
    summary = api.run(["BPR"], "tiny", data_dir=tiny_sequences, out=out, epochs=1, workers=2)
    (result,) = summary.results
    assert result.ok and result.environment.ray_node_id is None  # not Ray
    # Its threads: its share of this machine's cores, which two workers share.
    assert result.config["threads"] == max(1, runner.usable_cores() // 2)
    assert (out / "runs" / "tiny" / "BPR" / "seed-0.json").is_file()
    assert summary.leaderboard is not None and "BPR" in summary.leaderboard.read_text()


@pytest.mark.slow
def test_a_killed_pool_worker_s_run_continues_from_its_checkpoint(tiny_sequences):
    from bench.preflight import preflight

    checkpoints = tiny_sequences / "checkpoints"
    (prepared,) = preflight(
        ["SASRec"], "tiny", epochs=20, settings={**TINY, "stopping_step": 100},
        data_dir=tiny_sequences, device="cpu", checkpoint_root=checkpoints,
    ).runs  # fmt: skip
    log = tiny_sequences / "run.log"
    with PoolExecutor(2) as pool:
        pool.submit(RunRequest("sasrec", prepared.options, log_file=log))
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("tiny/SASRec/seed-0-*/last.pth")):
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        victim = int(re.search(r"pid (\d+)", log.read_text()).group(1))
        os.kill(victim, signal.SIGKILL)  # as the OOM killer would
        finished = []
        while not finished:
            finished = pool.wait(timeout=120)
    ((request, outcome),) = finished
    assert outcome.state == "ok" and outcome.attempts == 2 and outcome.pid != victim
    assert f"worker process {victim} ended (signal 9)" in outcome.lost[0]
    assert request.options.resume and outcome.result.timing.resumed_from_epoch is not None
    assert "an earlier attempt lost its worker" in log.read_text()


def test_a_pool_worker_ends_with_its_driver(tmp_path: Path):
    """A driver killed with SIGKILL stops nobody: its workers notice and end themselves."""
    code = (
        "import multiprocessing, os, sys, time\n"
        "from bench import executor\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    child = ctx.Process(target=executor._exit_with, args=(os.getpid(),))\n"
        "    child.start()\n"
        "    print(child.pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    script = tmp_path / "driver.py"
    script.write_text(code)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(driver.stdout.readline())
    driver.kill()
    driver.wait(timeout=30)
    driver.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the worker outlived its driver"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:  # a zombie (ended, not yet reaped by init) counts as ended
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_local_ray_instance_runs_and_records_its_node(tiny_sequences):
    import ray

    summary = api.run(
        ["Pop"], "tiny", data_dir=tiny_sequences, out=tiny_sequences / "out", ray_address="local"
    )
    (result,) = summary.results
    assert result.ok and result.environment.ray_node_id and result.environment.host
    assert not ray.is_initialized()  # its own instance, stopped at the end
