"""RecBole extensions for recbole-bench: compatibility fixes, models, layers, metrics and glue."""

from recbole_ext import compat

compat.apply()

from recbole_ext import metrics  # noqa: E402  (registers RecallCap with RecBole's evaluator)

__all__ = ["compat", "metrics"]
