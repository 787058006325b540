"""Optuna pruners by name: ``median`` (default), ``hyperband``, ``none``.

Steps are epochs: every validation reports ``trial.report(score, epoch)``.
"""

from __future__ import annotations

from typing import Any

from bench.errors import BenchError

PRUNERS = ("median", "hyperband", "none")


def make_pruner(name: str, *, epochs: int, startup_trials: int = 5, warmup_epochs: int = 1) -> Any:
    """The pruner ``name``. ``startup_trials`` finished trials are needed before the median
    pruner stops any; no trial is stopped before it has validated ``warmup_epochs`` + 1 times."""
    import optuna

    if startup_trials < 0 or warmup_epochs < 0:
        raise BenchError("pruner startup trials and warm-up epochs must be >= 0")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs
        )
    if name == "hyperband":
        # Resources are epochs; the largest budget is the configured epoch limit.
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, epochs), reduction_factor=3
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise BenchError(f"unknown --pruner {name!r} (one of {', '.join(PRUNERS)})")
