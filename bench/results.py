"""Per-run result files: ``<out>/runs/<dataset>/<model>/seed-<seed>.json``, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.io import write_json


def run_path(out: str | os.PathLike, dataset: str, model: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / model / f"seed-{seed}.json"


def write_result(out: str | os.PathLike, result: dict[str, Any]) -> Path:
    path = run_path(out, result["dataset"], result["model"], result["seed"])
    return write_json(path, result)


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
