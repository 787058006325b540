"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recbole_ext import compat
from tests.helpers import write_inter

compat.apply()  # the tests are an entry point: RecBole patched before any test runs


@pytest.fixture
def tiny_sequences(tmp_path: Path) -> Path:
    """40 users, 30 items, 6-12 interactions each, as ``<tmp>/tiny/tiny.inter``."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 41):
        items = rng.choice(np.arange(1, 31), size=rng.integers(6, 13), replace=False)
        rows += [(user, int(item), float(t)) for t, item in enumerate(items)]
    write_inter(tmp_path, "tiny", rows)
    return tmp_path
