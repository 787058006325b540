"""What the benchmark scripts share: the machine a figure was measured on, medians and ratios,
markdown tables, workers in fresh subprocesses, and atomic JSON + markdown reports.

Only the standard library is imported at module level (and :mod:`bench.io`, which is standard
library only), so a script's parent process or a stock-RecBole worker can use it without pulling
in PyTorch, RecBole or ``recbole_ext``; :func:`machine_info` imports torch and numpy when called.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a script run by path: make ``bench`` importable
    sys.path.insert(0, str(REPO))

from bench.io import write_text  # noqa: E402  (standard library only)

PERF_DIR = REPO / "results" / "perf"


# --- the machine ------------------------------------------------------------------------------
def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or platform.machine()


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """The CPU, its usable cores, the torch threads asked for, package versions, the git commit
    (``-dirty`` with uncommitted code changes) and the load when it was taken."""
    from bench.environment import git_commit

    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "usable_cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _package_version("torch"),
        "numpy": _package_version("numpy"),
        "recbole": _package_version("recbole"),
        "git_commit": git_commit(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command a report was made with: ``python <script> <args>``, shell-quoted."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", script, *args])


# --- numbers ----------------------------------------------------------------------------------
def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    kept = [float(v) for v in values if v is not None]
    return statistics.median(kept) if kept else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: blank for None, thousands separators for ints, ``digits`` decimals else."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] | None = None
) -> list[str]:
    """A markdown table's lines. Cells are written as given (``str``) and their ``|`` escaped;
    ``right`` marks the right-aligned (numeric) columns."""
    right = list(right) if right is not None else [False] * len(headers)
    if len(right) != len(headers):
        raise ValueError("right must have one flag per header")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(headers), "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} headers")
        lines.append(line(row))
    return lines


# --- reports ----------------------------------------------------------------------------------
def write_report(
    out_dir: str | os.PathLike, stem: str, report: dict[str, Any], markdown: str
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``.md``, each atomically (a reader never sees half a
    file; a killed run leaves the previous report)."""
    out = Path(out_dir)
    json_path = write_text(out / f"{stem}.json", json.dumps(report, indent=1, default=str) + "\n")
    text = markdown if markdown.endswith("\n") else markdown + "\n"
    md_path = write_text(out / f"{stem}.md", text)
    return json_path, md_path


# --- workers in fresh subprocesses ------------------------------------------------------------
def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_worker_process(
    script: str | os.PathLike,
    job: dict[str, Any],
    time_limit: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python <script> --worker JOB.json`` in its own session and return the result it
    wrote to ``job["result"]`` (a path this function sets), with ``wall_seconds``.

    The worker must write a JSON object with a ``status`` there. A worker that exits without one
    gives ``{"status": "failed", "error": <its last output line>}``; one that runs past
    ``time_limit`` seconds is killed with its whole process group and gives ``"timed out"``. So a
    crash or a hang costs one result, never the caller.
    """
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        result_path = Path(tmp) / "result.json"
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps({**job, "result": str(result_path)}, default=str))
        log_path = Path(tmp) / "worker.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
        )
        cmd = [sys.executable, str(Path(script).resolve()), "--worker", str(job_file)]
        started = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                code = proc.wait(timeout=time_limit)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session only
                proc.wait()
                return {
                    "status": "timed out",
                    "error": f"timed out after {time_limit:g} s",
                    "wall_seconds": time.perf_counter() - started,
                    "log_tail": log_path.read_text()[-2000:],
                }
        wall = time.perf_counter() - started
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if result.get("status") != "ok":
                result["log_tail"] = log_path.read_text()[-2000:]
        else:
            result = {
                "status": "failed",
                "error": f"worker exited with {code}: {_last_line(log_path.read_text())}",
                "log_tail": log_path.read_text()[-2000:],
            }
        result["wall_seconds"] = wall
        return result
