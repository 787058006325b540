"""RecBole extensions for recbole-bench: compatibility fixes, models, layers and glue."""

from recbole_ext import compat

compat.apply()
