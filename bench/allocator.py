"""glibc's malloc told to keep a training process's freed memory instead of returning it.

A training step on the CPU allocates and frees tensors of tens of MiB (activations, their
gradients, a batch's scores over every item). glibc serves an allocation over its mmap
threshold (adaptive, at most 32 MiB) with fresh pages from the kernel and hands a freed heap top
back once it passes its trim threshold, so each step makes the kernel fault in and zero those
pages again: a tenth to a third of a run's CPU time went to the kernel on the converged boards'
runs (``results/perf/malloc.md``). :func:`keep_freed_memory` sets, through ``mallopt``, no
allocation served by mmap and no trimming of the heap: the pages are reused from step to step
and the process keeps its peak resident memory until :func:`release_freed_memory` (``malloc_trim``)
at the start of each measured phase (:class:`bench.memory.PeakRSS`), so a phase's peak is still
its own. What a run computes is unchanged (PyTorch aligns every CPU tensor to 64 bytes whatever
the allocator returns; tested).

Applied on purpose, once per process, where runs train (:func:`bench.runner.execute`). Left
alone where ``BENCH_MALLOC=system`` is set or the environment already tunes glibc's malloc
(``MALLOC_*_`` variables, ``glibc.malloc`` tunables): those win. Only with glibc (Linux);
elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

from bench.errors import BenchError

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest trim threshold mallopt takes (a C int): a heap top this large free is returned.
TRIM_THRESHOLD = 2**31 - 1

ENV = "BENCH_MALLOC"  # "kept" (the default) or "system": glibc's defaults
_applied: str | None = None


def _set_by_environment() -> bool:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "glibc.malloc." in tunables or any(
        name.startswith("MALLOC_") and name.endswith("_") for name in os.environ
    )


def requested() -> str:
    """What ``BENCH_MALLOC`` asks: ``kept`` (unset) or ``system``; another value is refused
    (the pre-flight asks first, before anything is written)."""
    asked = os.environ.get(ENV, "").strip().lower() or "kept"
    if asked not in ("kept", "system"):
        raise BenchError(f"{ENV} must be 'kept' (the default) or 'system', not {asked!r}")
    return asked


def keep_freed_memory() -> str:
    """Tune this process's malloc as the module says, once; return how malloc runs here:
    ``kept`` (tuned now or earlier), ``environment`` (the environment's own settings),
    ``system`` (``BENCH_MALLOC=system``, or no glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    asked = requested()
    if asked == "system" or not sys.platform.startswith("linux"):
        _applied = "system"
    elif _set_by_environment():
        _applied = "environment"
    else:
        _applied = "kept" if _mallopt() else "system"
    return _applied


def _mallopt() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):  # not glibc (musl's has no mallopt worth setting)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. The trim threshold first: it also ends the adaptive mmap
    # threshold, which would otherwise keep moving.
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_MAX, 0))


def release_freed_memory() -> None:
    """Give the kernel back the memory malloc holds free (``malloc_trim``), where this process
    keeps it (:func:`keep_freed_memory`); elsewhere nothing."""
    if _applied != "kept":
        return
    trim = ctypes.CDLL(None).malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
