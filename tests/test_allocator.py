"""glibc's malloc kept from returning a training process's freed memory (bench.allocator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc: Linux"
)

# Allocates and frees a 64 MiB tensor (over glibc's largest mmap threshold, 32 MiB) 15 times, then
# 20 more; prints how malloc runs here, the minor page faults of the 20, and the resident MiB
# with the last one freed, then after release_freed_memory().
_PROBE = """
import json, resource
import torch
from bench import allocator
from bench.memory import rss_mib

def rounds(n):
    for _ in range(n):
        block = torch.empty(16 * 1024 * 1024)
        block.fill_(1.0)
        del block

mode = allocator.keep_freed_memory()
assert allocator.keep_freed_memory() == mode  # once a process
# Kept, the heap grows for a few rounds (here 7-8) until the freed blocks, which sit between small
# allocations made after them, coalesce into room for the next one with its alignment padding.
rounds(15)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
held = rss_mib()
allocator.release_freed_memory()
print(json.dumps({"mode": mode, "faults": faults, "held": held, "released": rss_mib()}))
"""


def _probe(**env: str) -> dict:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "BENCH_MALLOC")
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PROBE)],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults_and_released_on_request():
    kept, system = _probe(), _probe(BENCH_MALLOC="system")
    assert kept["mode"] == "kept" and system["mode"] == "system"
    # glibc's defaults map each 64 MiB block afresh: 16,384 pages faulted in a round.
    assert system["faults"] >= 20 * 16_000
    assert kept["faults"] < 2_000  # the same heap pages every round
    assert kept["held"] - kept["released"] >= 60  # the freed block was kept, then given back


@pytest.mark.parametrize(
    "env",
    [
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"},
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
    ],
    ids=["tunables", "malloc-variable"],
)
def test_the_environments_own_malloc_settings_win(env):
    probe = _probe(**env)
    assert probe["mode"] == "environment"
    assert probe["faults"] >= 20 * 16_000  # not kept: the environment's settings are in force


@pytest.mark.slow
def test_a_run_computes_the_same_with_malloc_kept_or_not(tiny_sequences, tmp_path):
    """The allocator moves seconds and memory only: same losses, validations and test values."""
    results = {}
    for mode, env in (("kept", {}), ("system", {"BENCH_MALLOC": "system"})):
        out = tmp_path / mode
        args = ["run", "--models", "SLIME4Rec,MultVAE", "--dataset", "tiny", "--epochs", "3"]
        args += ["--data-dir", str(tiny_sequences), "--out", str(out), "--device", "cpu"]
        args += ["--set", "hidden_size=8", "--set", "inner_size=16", "--set", "threads=1"]
        done = run_cli(*args, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        for model in ("SLIME4Rec", "MultVAE"):
            record = json.loads((out / "runs" / "tiny" / model / "seed-0.json").read_text())
            assert record["environment"]["malloc"] == mode
            epochs = [(e["train_loss"], e["valid_score"]) for e in record["epochs"]]
            results[mode, model] = (epochs, record["valid"], record["test"])
    for model in ("SLIME4Rec", "MultVAE"):
        assert results["kept", model] == results["system", model]


def test_an_unknown_bench_malloc_value_is_refused(monkeypatch):
    from bench import allocator
    from bench.errors import BenchError

    monkeypatch.setattr(allocator, "_applied", None)  # as in a fresh process
    monkeypatch.setenv("BENCH_MALLOC", "off")
    with pytest.raises(BenchError, match="BENCH_MALLOC must be 'kept' .* not 'off'"):
        allocator.keep_freed_memory()
    assert allocator._applied is None  # nothing was set


def test_bench_run_refuses_an_unknown_bench_malloc_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    args = ["run", "--models", "Pop", "--dataset", "ml-100k", "--quick", "--out", str(out)]
    done = run_cli(*args, env={"BENCH_MALLOC": "off"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: BENCH_MALLOC must be 'kept' (the default) or 'system', not 'off'"
    )
    assert not out.exists()
