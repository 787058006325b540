"""recbole-bench: benchmark recommender models on RecBole, from a CLI or from Python.

``bench.run(...)`` trains and evaluates models and writes results and a leaderboard;
``bench.write_leaderboard(out, dataset)`` rebuilds a leaderboard from existing results.
The heavy imports (PyTorch, RecBole) happen on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run", "write_leaderboard", "BenchError"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from bench.api import run

        return run
    if name == "write_leaderboard":
        from bench.leaderboard import write

        return write
    if name == "BenchError":
        from bench.errors import BenchError

        return BenchError
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
