"""Hyperparameter searches, ablation grids and the study dashboard.

``tune(...)`` runs an Optuna study (trials through :mod:`bench.executor`), exports the best
parameters to ``<out>/tuned/<dataset>/<Model>.yaml`` and re-runs them over several seeds;
``ablate(...)`` runs a grid of variants x seeds and writes a report; ``serve_dashboard(...)``
serves optuna-dashboard on a study storage. Optuna and Ray are imported on first use, never when
``bench`` is imported.

Modules, one job each: ``space`` (search-space YAML -> distributions), ``samplers``, ``pruners``,
``storage`` (journal file or database URL), ``study`` (the tune loop: resume, export, final
runs), ``export`` (the tuned config file), ``ablation`` and ``dashboard``. Where trials and runs
execute (in this process, worker processes or Ray tasks) is :mod:`bench.executor`'s, shared with
``bench run`` and ``bench plan``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tune", "ablate", "serve_dashboard", "TuneSummary", "AblationSummary"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `from bench.tuning import ablate` does not pull Optuna in.
    if name in ("tune", "TuneSummary"):
        from bench.tuning import study

        return getattr(study, name)
    if name in ("ablate", "AblationSummary"):
        from bench.tuning import ablation

        return getattr(ablation, name)
    if name == "serve_dashboard":
        from bench.tuning.dashboard import serve

        return serve
    raise AttributeError(f"module 'bench.tuning' has no attribute {name!r}")
