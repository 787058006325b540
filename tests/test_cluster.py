"""Plans, suites and studies on a Ray cluster of two nodes (tests/cluster.py: a head and a second
node, separate processes on loopback, one CPU each): runs land on both nodes and each result
records its node; GPU shares are placed on the node that has them (a custom resource standing in
for GPUs); no run has two results; a node killed mid-plan leaves its run re-queued, not lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench import contract
from bench.executor import GPU_RESOURCE_ENV
from tests.cluster import FAKE_GPU, RayCluster, ray_cluster_fixture  # noqa: F401
from tests.helpers import ROOT, TINY
from tests.servers import postgres_server

pytestmark = pytest.mark.slow

TINY_SETS = [x for key, value in TINY.items() for x in ("--set", f"{key}={value}")]


def _bench(cluster: RayCluster, *args: str, env: dict | None = None, timeout: float = 240):
    """``bench ARGS`` as a driver of the cluster, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env={**cluster.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _results(out: Path) -> list[contract.RunResult]:
    return contract.load_results(out, "tiny")


def test_a_plan_spreads_over_both_nodes_and_gpu_shares_go_where_the_gpus_are(
    ray_cluster: RayCluster, tiny_sequences: Path
) -> None:
    plan = tiny_sequences / "two.yaml"
    plan.write_text("jobs:\n  - {dataset: tiny, models: [Pop, BPR], seeds: [0, 1], epochs: 1}\n")
    out = tiny_sequences / "out"
    common = ["--data-dir", str(tiny_sequences), "--out", str(out), "--device", "cpu"]
    done = _bench(ray_cluster, "plan", str(plan), "--ray-address", ray_cluster.address, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "plans" / "two.json").read_text())
    keys = Counter(r["dataset"] + r["model"] + str(r["seed"]) for r in record["runs"])
    assert len(keys) == 4 and set(keys.values()) == {1}  # every run once
    assert all(r["status"] == "ok" for r in record["runs"])
    results = _results(out)
    assert len(results) == 4 and all(r.ok for r in results)
    # Two runs at a time on two nodes of one CPU each: both nodes ran some; each result says which.
    nodes = {r.environment.ray_node_id for r in results}
    assert nodes == set(ray_cluster.node_ids.values())
    assert {r["ray_node_id"] for r in record["runs"]} == nodes
    assert (out / "leaderboard" / "tiny.md").is_file()

    # `bench run --models ... --workers 2` the same way; half a (fake) GPU each: only the
    # second node has one, so both runs go there, and share it.
    gpu_out = tiny_sequences / "gpu"
    fake = {GPU_RESOURCE_ENV: FAKE_GPU}
    args = ["run", "--models", "Pop", "--dataset", "tiny", "--seeds", "0,1", "--workers", "2"]
    args += ["--ray-address", ray_cluster.address, "--gpus-per-run", "0.5"]
    data = ["--data-dir", str(tiny_sequences), "--out", str(gpu_out)]
    done = _bench(ray_cluster, *args, *data, env=fake)
    assert done.returncode == 0, done.stderr[-3000:]
    placed = _results(gpu_out)
    assert len(placed) == 2
    assert {r.environment.ray_node_id for r in placed} == {ray_cluster.node_ids["second"]}
    # A share no node holds is refused before anything runs.
    args[-1] = "2"
    done = _bench(ray_cluster, *args, *data, env=fake)
    assert done.returncode == 2 and "no node of the Ray cluster holds a run" in done.stderr


def test_a_study_runs_its_trials_on_both_nodes(
    ray_cluster: RayCluster, tiny_sequences: Path
) -> None:
    import optuna

    space = tiny_sequences / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 1.0e-3, high: 2.0e-2}\n")
    out = tiny_sequences / "out"
    with postgres_server() as postgres:  # a study on a cluster needs a database every node reaches
        url = postgres.create_database("cluster")
        done = _bench(
            ray_cluster, "tune", "--model", "SASRec", "--dataset", "tiny", "--trials", "3",
            "--data-dir", str(tiny_sequences), "--storage", url, "--study", "c",
            "--space", str(space), "--out", str(out), "--epochs", "1", "--pruner", "none",
            "--sampler", "random", "--final-seeds", "none", "--device", "cpu",
            "--ray-address", ray_cluster.address, *TINY_SETS,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        storage = optuna.storages.RDBStorage(url)
        trials = storage.get_all_trials(storage.get_study_id_from_name("c"))
        storage.engine.dispose()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert {t.user_attrs["ray_node_id"] for t in trials} == set(ray_cluster.node_ids.values())
    assert all(t.intermediate_values for t in trials)  # the workers reported into the study
    records = [json.loads(p.read_text()) for p in (out / "studies" / "c").glob("*/result.json")]
    assert sorted(r["trial"]["number"] for r in records) == [0, 1, 2]  # one record a trial
    for record in records:
        assert record["environment"]["ray_node_id"] == record["trial"]["ray_node_id"]


def test_a_node_killed_mid_plan_leaves_its_run_re_queued_not_lost(
    ray_cluster: RayCluster, tiny_sequences: Path
) -> None:
    """Runs last long enough (300 tiny epochs, several seconds) to kill the second node once its
    run has written a checkpoint; the driver re-queues that run, which continues from the
    checkpoint (the results folder is shared: one machine) on the head."""
    plan = tiny_sequences / "kill.yaml"
    plan.write_text(
        "jobs:\n  - {dataset: tiny, models: [SASRec], seeds: [0, 1, 2, 3], epochs: 300,\n"
        "     set: {hidden_size: 8, inner_size: 16, n_layers: 1, MAX_ITEM_LIST_LENGTH: 10,\n"
        "           train_batch_size: 4096, stopping_step: 1000}}\n"
    )
    out = tiny_sequences / "out"
    logs = out / "plans" / "kill" / "logs"
    second = ray_cluster.node_ids["second"]
    command = [sys.executable, "-m", "bench", "plan", str(plan), "--ray-address"]
    command += [ray_cluster.address, "--data-dir", str(tiny_sequences), "--out", str(out)]
    with open(tiny_sequences / "driver.log", "w") as log:
        driver = subprocess.Popen(
            [*command, "--device", "cpu"], cwd=ROOT, env=ray_cluster.env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        victim = None
        deadline = time.monotonic() + 180
        while victim is None:  # the run on the second node, once it has a checkpoint
            assert driver.poll() is None, (tiny_sequences / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no run checkpointed on the second node"
            for path in logs.glob("*.log") if logs.is_dir() else []:
                if second in path.read_text():
                    _, label, seed = path.stem.split("__")
                    folder = out / "checkpoints" / "tiny" / label
                    if list(folder.glob(f"{seed}-*/last.pth")):
                        victim = path.stem
            time.sleep(0.05)
        ray_cluster.second.kill()  # its raylet, agents and the run's worker, at once
        assert driver.wait(timeout=240) == 0, (tiny_sequences / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        ray_cluster.start_second()  # for any test after this one
    printed = (tiny_sequences / "driver.log").read_text()
    assert f"re-queued {victim} (attempt 2)" in printed
    record = json.loads((out / "plans" / "kill.json").read_text())
    keys = Counter(f"tiny__{r['model']}__seed-{r['seed']}" for r in record["runs"])
    expected = {f"tiny__SASRec__seed-{seed}" for seed in range(4)}
    assert set(keys) == expected and set(keys.values()) == {1}  # none lost, none twice
    assert all(r["status"] == "ok" for r in record["runs"])
    entry = next(r for r in record["runs"] if f"tiny__{r['model']}__seed-{r['seed']}" == victim)
    assert entry["attempts"] == 2 and entry["ray_node_id"] == ray_cluster.node_ids["head"]
    assert "NodeDiedError" in entry["lost"][0] or "WorkerCrashedError" in entry["lost"][0]
    _, label, seed = victim.split("__")
    result = contract.read_result(out / "runs" / "tiny" / label / f"{seed}.json")
    assert result.ok and result.environment.ray_node_id == ray_cluster.node_ids["head"]
    assert result.timing.resumed_from_epoch is not None  # from the killed attempt's checkpoint
    assert len(_results(out)) == 4
