"""Helpers shared by the tests: tiny atomic datasets and running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Settings that make any built-in model train in seconds on a CPU.
TINY = {
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 1,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 4096,
}


def write_inter(folder: Path, name: str, rows: list[tuple[int, int, float]]) -> Path:
    path = folder / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{t}" for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run ``python -m bench ...`` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("BENCH_DATA_DIR", None) if env is None or "BENCH_DATA_DIR" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
