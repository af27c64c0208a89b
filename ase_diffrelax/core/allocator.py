"""CPU inference without page-fault churn: keep glibc from handing activation buffers back to the OS.

glibc serves allocations above M_MMAP_THRESHOLD (dynamic, from 128 KiB) with fresh mmap()s and
trims the heap top above M_TRIM_THRESHOLD, so every eager forward pass unmaps its large
activation buffers and faults them back in on the next step: 39-47 % of eager CPU time went to
the kernel (issue 22, docs/benchmarks.md). Raising both thresholds keeps the buffers in the heap
and reuses them, as the environment variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
would, without the user knowing about either.

The CLI calls ``tune_allocator()`` at start-up and ``load_model`` on its first call, so neither
CLI nor library users need to know about it. It changes the allocator of the whole process:
blocks below 32 MiB freed by any library stay reserved by the process (up to its peak use) and
the heap is trimmed only when 2 GiB sit free at its top. A host application that cannot accept
that sets ``ASE_DIFFRELAX_TUNE_ALLOCATOR=0`` (or its own MALLOC_*_ variables, which win).
Without glibc (macOS, Windows, musl) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD_BYTES = 2**31 - 1  # an int: trim only when 2 GiB sit free at the top of the heap

_STATE: dict = {}


def tune_allocator() -> str:
    """Raise glibc's mmap and trim thresholds for this process (idempotent). Returns what was done:
    "tuned", "already tuned", "environment" (MALLOC_*_ variables set by the user win), "off (...)"
    (ASE_DIFFRELAX_TUNE_ALLOCATOR=0 opts out), or
    "unavailable: <why>"."""
    if "result" in _STATE:
        return "already tuned" if _STATE["result"] == "tuned" else _STATE["result"]
    if os.environ.get("ASE_DIFFRELAX_TUNE_ALLOCATOR", "1") == "0":
        result = "off (ASE_DIFFRELAX_TUNE_ALLOCATOR=0)"
    elif os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        result = "environment"
    elif not sys.platform.startswith("linux"):
        result = f"unavailable: not glibc ({sys.platform})"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            result = "unavailable: no mallopt in this C library (not glibc)"
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and \
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
            result = "tuned" if ok else "unavailable: mallopt refused the thresholds"
    _STATE["result"] = result
    return result
