"""Peak memory of one phase of a run (training, evaluation): what a result records beside its
timings, and what the speed benchmarks report.

On CUDA the phase's ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``. On the CPU the
peak resident memory of the process during the phase: Linux keeps that peak (VmHWM) itself and
resets it when "5" is written to ``/proc/self/clear_refs``, which is exact and needs no sampling
thread competing for the CPU; elsewhere only the process-lifetime ``ru_maxrss`` exists, which
bounds the phase from above (``exact`` is then false).
"""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

from bench.allocator import release_freed_memory

MIB = 1024 * 1024


def _proc_status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def rss_mib() -> float:
    """The process's resident memory now (MiB)."""
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    import psutil  # not on Linux

    return psutil.Process().memory_info().rss / MIB


class PeakRSS:
    """Peak resident memory of the process during a ``with`` block, and at its start (MiB).
    ``release``: first give the kernel back what malloc holds free, so that what an earlier
    phase left is not counted in this one (off: time a phase on a heap as a long run has it)."""

    def __init__(self, release: bool = True) -> None:
        self.release = release

    def __enter__(self) -> PeakRSS:
        gc.collect()
        if self.release:
            release_freed_memory()
        self.start = rss_mib()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _proc_status_kib("VmHWM") if self.exact else None
        if hwm is None:
            import resource

            self.exact = False
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.peak = hwm / 1024
        self.delta = self.peak - self.start


class PeakMemory:
    """Peak memory on ``device`` of a ``with`` block, or from :meth:`start` to :meth:`stop`."""

    def __init__(self, device: Any, release: bool = True) -> None:
        import torch

        self.device = torch.device(device)
        self.release = release  # on the CPU: as PeakRSS's
        self.values: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / MIB
        else:
            self._rss = PeakRSS(self.release).__enter__()
        return self

    def stop(self) -> dict[str, Any]:
        """End the phase; its peak as plain values."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.values = {
                "kind": "cuda_allocated",
                "peak_mib": torch.cuda.max_memory_allocated(self.device) / MIB,
                "reserved_mib": torch.cuda.max_memory_reserved(self.device) / MIB,
                "start_mib": self._start,
                "exact": True,
            }
        else:
            self._rss.__exit__()
            self.values = {
                "kind": "cpu_rss",
                "peak_mib": self._rss.peak,
                "start_mib": self._rss.start,
                "exact": self._rss.exact,
            }
        return dict(self.values)
