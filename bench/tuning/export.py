"""The best trial's parameters as ``<out>/tuned/<dataset>/<Model>.yaml`` (read by ``--tuned``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import configs
from bench.io import write_text


def tuned_text(
    values: dict[str, Any],
    *,
    study: str,
    trial: int,
    metric: str,
    score: float,
    dataset: str,
    storage: str,
    space: str,
    settings: dict[str, Any],
) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        f"# Tuned by `bench tune` on {dataset}: study {study!r}, trial {trial}, "
        f"validation {metric} = {score:.6g}; written {date}.",
        f"# Search space: {space}; storage: {storage}.",
        "# `bench run --tuned --out <this file's results folder>` layers it over the model's "
        "defaults (configs/models/).",
    ]
    if settings:
        fixed = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        header.append(f"# The study also ran with --set/--epochs: {fixed} (not part of this file).")
    body = yaml.safe_dump(values, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def export_tuned(
    folder: str | os.PathLike, dataset: str, model: str, values: dict[str, Any], **header: Any
) -> Path:
    """Write ``<folder>/<dataset>/<Model>.yaml`` (``folder``: a results folder's ``tuned/``)
    atomically; returns its path."""
    path = configs.tuned_file(folder, dataset, model)
    write_text(path, tuned_text(values, dataset=dataset, **header))
    return path
