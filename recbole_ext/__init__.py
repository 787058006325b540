"""RecBole extensions for recbole-bench: compatibility fixes, models, layers, metrics and glue.

Importing this package changes nothing outside it. ``recbole_ext.compat.apply()`` patches RecBole
for today's NumPy, pandas, SciPy and PyTorch and registers this package's metrics: call it before
building any RecBole object (the ``bench`` entry points do).
"""
