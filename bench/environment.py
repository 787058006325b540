"""What produced a result: package versions, git commit, machine and device."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("recbole-bench", "recbole", "torch", "numpy", "pandas", "scipy")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


ROOT = Path(__file__).resolve().parents[1]


# What a run's code is: everything of the checkout but what cannot change what a run computes
# (its results, the docs, the tests, the README, the CI script).
_CODE = ("--", ".", ":!results", ":!docs", ":!tests", ":!README.md", ":!.ci")


def _run(*command: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def _git(root: Path, *args: str) -> str:
    return _run("git", *args, cwd=root)


def _dirty(root: Path) -> bool:
    """Uncommitted changes to the code or configs. ``results/`` is left out (every run rewrites
    the leaderboards there, so counting it would mark all but the first run of a benchmark as
    dirty), and so are the docs and the tests (see ``_CODE``)."""
    return bool(_git(root, "status", "--porcelain", "--untracked-files=no", *_CODE))


@cache
def git_commit(root: Path = ROOT) -> str | None:
    """HEAD of the harness's checkout, with ``-dirty`` when its code or configs have uncommitted
    changes."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _dirty(root)
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


@cache
def code_version(root: Path = ROOT) -> str | None:
    """The last commit that changed the code or configs (anything outside ``results/``,
    ``docs/``, ``tests/``, ``README.md`` and ``.ci/``), with ``-dirty`` as :func:`git_commit`: a
    commit that only adds results or edits the docs or tests leaves it as it was, so the runs
    after it count as the same code as the runs before."""
    try:
        commit = _git(root, "log", "-1", "--format=%H", *_CODE)
        dirty = _dirty(root)
    except (OSError, subprocess.CalledProcessError):
        return None
    if not commit:  # no commit touches code (an empty history)
        return None
    return f"{commit}-dirty" if dirty else commit


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS), or the
    architecture where neither says (``platform.processor()`` is empty on most Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return _run("sysctl", "-n", "machdep.cpu.brand_string")
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """The GPU's name; for the CPU its model and the vector instructions PyTorch's kernels use
    there (``AMD EPYC (AVX512)``): the same code on another instruction set sums floats in
    another order, so a re-run there may differ in the last digits."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


def environment(device: Any) -> dict[str, Any]:
    import os

    return {
        "packages": package_versions(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "device_name": device_name(device),
    }
