"""Freed memory kept by the C allocator for the next tensor, so that training steps do not page-fault.

glibc hands a freed block larger than its mmap threshold back to the kernel at once, and the free top of
its heap beyond the trim threshold; a later tensor of that size is then faulted in again, page by page.
Both thresholds move with what the process happened to free before, so the same computation faulted in
one process and not in another: a 1-CNN student's logged row took 11.2 ms with 4 618 page faults in one
process and 2.9–3.6 ms with none once the thresholds were set (:func:`reuse_freed_memory`).
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept for reuse before it is handed back


@functools.cache
def reuse_freed_memory() -> bool:
    """Set glibc's thresholds (process-wide, once) so that freed blocks up to MMAP_THRESHOLD and up to
    TRIM_THRESHOLD of free heap stay in the process; whether they were set (False where the C library
    has no `mallopt`: macOS, Windows)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, TypeError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
