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


def completed(
    out: str | os.PathLike,
    dataset: str,
    model: str,
    seed: int,
    wanted: dict[str, Any] | None = None,
) -> bool:
    """Whether a successful result exists that a run configured with ``wanted`` would only
    repeat (``--resume`` skips those; failed runs run again). See :func:`answers`."""
    result = read_result(run_path(out, dataset, model, seed))
    return bool(result) and result.get("status") == "ok" and answers(result, wanted or {})


def answers(result: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether ``result`` is what a run configured with ``wanted`` computes.

    Every wanted scalar or list the result's config holds must agree (a model default changed
    since, such as a patience, means a run again). Nested settings and unset ones are left out:
    RecBole rewrites those when it resolves a config (``mode: full`` becomes one mode per split,
    an unset negative sampling a dict of ``none``). A run its time budget stopped is reused only
    for a budget no larger than its own (``time_budget_s`` 0 wants no cap, so it trains on).
    """
    config = result.get("config") or {}
    if result.get("stopped_by_budget"):
        cap = float(config.get("time_budget_s") or 0)
        budget = float(wanted.get("time_budget_s") or 0)
        if budget <= 0 or budget > cap:
            return False
    return all(
        _agrees(config[key], value)
        for key, value in wanted.items()
        if key != "time_budget_s"
        and key in config
        and value is not None
        and not isinstance(value, dict)
    )


def _agrees(have: Any, want: Any) -> bool:
    if isinstance(want, list | tuple):
        return (
            isinstance(have, list | tuple)
            and len(have) == len(want)
            and all(_agrees(h, w) for h, w in zip(have, want, strict=True))
        )
    if isinstance(want, int | float) and not isinstance(want, bool):
        try:
            return abs(float(have) - float(want)) <= 1e-9 * max(1.0, abs(float(want)))
        except (TypeError, ValueError):
            return False
    return have == want or str(have) == str(want)


def load_results(out: str | os.PathLike, dataset: str | None = None) -> list[dict[str, Any]]:
    """Every readable result under ``<out>/runs`` (of one dataset, if given)."""
    root = Path(out) / "runs"
    pattern = f"{dataset}/*/seed-*.json" if dataset else "*/*/seed-*.json"
    results = [read_result(p) for p in sorted(root.glob(pattern))]
    return [r for r in results if r]
