"""The C allocator, tuned for a process that streams images off sockets.

asyncio reads a socket into a fresh buffer of up to 256 KiB per read and shrinks it to
what came. With glibc's defaults, buffers that size are mapped from the kernel and
unmapped again, or carved from the heap whose free top is handed back soon after; either
way every 4 KiB page of every image received costs a page fault on its next use: about
250 faults, half a millisecond of CPU, per 1 MB image. Serving buffers under 1 MiB from
the heap and keeping up to 64 MiB of it free for reuse removes them; the peak memory is
that of the buffers alive at once, as before.

Owns: this one process-wide setting. Must not know: anything else.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_for_streaming"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 64 << 20


def tune_for_streaming() -> bool:
    """Apply the setting (Linux with glibc); False where it does not apply or the user
    set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``, which win."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; musl's stub answers 0 and changes nothing
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
