"""Peak memory of a phase (bench.memory)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench.memory import PeakMemory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="exact peaks need Linux")
def test_cpu_peak_sees_memory_freed_before_the_phase_ends():
    with PeakMemory("cpu") as phase:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        del block
    peak = phase.values
    assert peak["kind"] == "cpu_rss" and peak["exact"] is True
    assert peak["peak_mib"] - peak["start_mib"] >= 60

    # A later phase starts from a fresh peak: the 64 MiB above are not in it.
    with PeakMemory("cpu") as quiet:
        pass
    assert quiet.values["peak_mib"] - quiet.values["start_mib"] < 30
