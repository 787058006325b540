"""Per-run result files, written atomically:

``<out>/runs/<dataset>/<model>/seed-<seed>.json``        the run's result
``<out>/runs/<dataset>/<model>/seed-<seed>.users.npz``   its per-user test values: ``user_id``
                                                         (raw tokens) and one float array per
                                                         metric@k, in the same user order
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.io import write_json

# The per-user test values travel in a result dict under this key until write_result stores them
# beside the JSON (as arrays they do not belong in it).
PER_USER_KEY = "per_user_test"


def run_path(out: str | os.PathLike, dataset: str, model: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / model / f"seed-{seed}.json"


def per_user_path(result_path: str | os.PathLike) -> Path:
    return Path(result_path).with_suffix(".users.npz")


def write_result(out: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write the result JSON, and its per-user values (if any) beside it."""
    result = dict(result)
    per_user = result.pop(PER_USER_KEY, None)
    path = run_path(out, result["dataset"], result["model"], result["seed"])
    npz = per_user_path(path)
    if per_user:
        npz.parent.mkdir(parents=True, exist_ok=True)
        tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in per_user.items()})
        os.replace(tmp, npz)
        result["per_user_file"] = npz.name
    else:
        npz.unlink(missing_ok=True)  # a stale file from an earlier run must not pair with this one
    return write_json(path, result)


def read_per_user(result_path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The per-user test values stored beside a result JSON, or None."""
    npz = per_user_path(result_path)
    if not npz.is_file():
        return None
    with np.load(npz, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_result(path: str | os.PathLike) -> dict[str, Any] | None:
    """A result file's content, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def completed(out: str | os.PathLike, dataset: str, model: str, seed: int) -> bool:
    """Whether a successful result exists (``--resume`` skips those; failed runs run again)."""
    result = read_result(run_path(out, dataset, model, seed))
    return bool(result) and result.get("status") == "ok"


def load_results(out: str | os.PathLike, dataset: str | None = None) -> list[dict[str, Any]]:
    """Every readable result under ``<out>/runs`` (of one dataset, if given)."""
    root = Path(out) / "runs"
    pattern = f"{dataset}/*/seed-*.json" if dataset else "*/*/seed-*.json"
    results = [read_result(p) for p in sorted(root.glob(pattern))]
    return [r for r in results if r]
