"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recbole_ext import compat
from tests.helpers import write_inter

compat.apply()  # the tests are an entry point: RecBole patched before any test runs

# Modules that start servers (a two-node Ray cluster, a local Ray instance, PostgreSQL, the
# dashboard in Chromium) or a driver that is killed mid-study: under pytest-xdist they share one
# worker, one after the other, so no two clusters start at once on a small machine.
SERVER_MODULES = frozenset(
    {
        "test_cluster",
        "test_dashboard_browser",
        "test_executor",
        "test_postgres_storage",
        "test_tune",
    }
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per test module (its module-scoped fixtures are built once), the server
    modules in one group together; ``--dist loadgroup`` (pyproject) hands out whole groups."""
    for item in items:
        module = item.path.stem
        group = "servers" if module in SERVER_MODULES else module
        item.add_marker(pytest.mark.xdist_group(group))


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
