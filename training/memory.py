"""Process-level memory settings for CPU training.

glibc raises its mmap threshold each time a large block is freed, so after the first step the
activation buffers of a step (tens of MB each) are served from the heap instead of fresh mmaps; freed,
they stay there and fragment it, keeping RSS 0.3–0.6 GiB above the live set (measured for TxFM-S,
batch 4, K = 2048: 2.60 GiB → 2.16 GiB peak with a fixed 1 MiB threshold; `benchmarks/RESULTS.md`).
Fixing the threshold makes every buffer above it a mmap that goes back to the OS when freed.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number, from <malloc.h>
DEFAULT_THRESHOLD = 1 << 20


def return_large_buffers_to_os(threshold_bytes: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's ``M_MMAP_THRESHOLD`` (same as ``MALLOC_MMAP_THRESHOLD_``); False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
