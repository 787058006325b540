"""Checkpoint files split into parts for a git host and joined back (bench.checkpoint_parts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.checkpoint_parts import join_all, manifest_path, split_large
from bench.errors import BenchError
from tests.helpers import ROOT


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    run = tmp_path / "checkpoints" / "beauty" / "Vamp" / "seed-0-abc"
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(os.urandom(2500))
    (run / "best.pth").write_bytes(os.urandom(900))
    return tmp_path / "checkpoints"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_split_replaces_large_files_by_parts_and_join_puts_them_back(folder: Path):
    before = _files(folder)
    (manifest,) = split_large(folder, max_bytes=1000)
    run = folder / "beauty" / "Vamp" / "seed-0-abc"
    assert manifest.name == "last.pth" and [p.size for p in manifest.parts] == [1000, 1000, 500]
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pth",  # under the limit: left whole
        "last.pth.part-000",
        "last.pth.part-001",
        "last.pth.part-002",
        "last.pth.parts.json",
    ]
    assert json.loads(manifest_path(run / "last.pth").read_text())["schema"] == 1
    assert split_large(folder, max_bytes=1000) == []  # nothing left to split

    assert join_all(folder) == [run / "last.pth"]
    assert _files(folder) == before


def test_splitting_a_newer_version_replaces_the_older_parts(folder: Path):
    run = folder / "beauty" / "Vamp" / "seed-0-abc"
    split_large(folder, max_bytes=1000)
    join_all(folder)
    (run / "last.pth").write_bytes(os.urandom(1500))  # the next sitting's, smaller
    (manifest,) = split_large(folder, max_bytes=1000)
    assert len(manifest.parts) == 2 and not (run / "last.pth.part-002").exists()


def test_a_damaged_part_is_refused_and_nothing_is_lost(folder: Path):
    run = folder / "beauty" / "Vamp" / "seed-0-abc"
    split_large(folder, max_bytes=1000)
    part = run / "last.pth.part-001"
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(BenchError, match="last.pth.part-001 does not match last.pth.parts.json"):
        join_all(folder)
    assert not (run / "last.pth").exists() and part.exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_whole_file_beside_parts_of_another_version_is_refused(folder: Path):
    run = folder / "beauty" / "Vamp" / "seed-0-abc"
    split_large(folder, max_bytes=1000)
    (run / "last.pth").write_bytes(b"newer")
    with pytest.raises(BenchError, match="remove the one that is out of date"):
        join_all(folder)


def test_the_cli_splits_and_joins_and_names_a_missing_folder(folder: Path, tmp_path: Path):
    before = _files(folder)

    def bench(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "bench", "checkpoints", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)

    split = bench("split", str(folder), "--max-mib", "0.001")
    assert split.returncode == 0, split.stderr
    assert "split last.pth: 0.0 MiB in 3 parts" in split.stdout
    assert "best.pth" not in split.stdout  # 900 bytes: under 0.001 MiB
    joined = bench("join", str(folder))
    assert joined.returncode == 0 and joined.stdout.startswith("joined ")
    assert _files(folder) == before
    missing = bench("join", str(tmp_path / "nope"))
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1].endswith(f"no such folder: {tmp_path / 'nope'}")
