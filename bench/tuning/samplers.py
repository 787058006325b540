"""Optuna samplers by name: ``tpe`` (default), ``random``, ``grid``."""

from __future__ import annotations

import warnings
from typing import Any

from bench.errors import BenchError
from bench.tuning.space import SearchSpace

SAMPLERS = ("tpe", "random", "grid")


def make_sampler(name: str, space: SearchSpace, seed: int | None, workers: int = 1) -> Any:
    """The sampler ``name``, seeded; TPE lies about running trials when trials run in parallel."""
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():
            # constant_liar is flagged experimental; it keeps parallel workers from sampling the
            # same point while earlier trials are still running.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise BenchError(f"unknown --sampler {name!r} (one of {', '.join(SAMPLERS)})")


def grid_size(space: SearchSpace) -> int:
    size = 1
    for values in space.grid().values():
        size *= len(values)
    return size
