"""Host allocator settings for long syntheses and training: keep freed buffers for reuse instead of
re-faulting them.

glibc serves a block of at least the mmap threshold with a fresh mmap, which the kernel zero-fills page
by page on first touch and which is unmapped again on free. Its default threshold starts at 128 KiB and
only grows (up to 32 MiB, the largest it accepts on 64-bit) when such a block is freed, and it returns
free memory at the heap's top to the kernel once more than twice that threshold is free. The decoder
allocates and frees tens of MB per op, so by default a long piece spends a large part of its time in
page faults (millions of minor faults for a minute of audio). Fixing the threshold at its maximum and
raising the trim threshold keeps blocks below 32 MiB in heap memory that is reused from op to op;
modules.inference_chunked sizes the decoder windows so that its activations stay below that size.
Training (modules.training, on the CPU) also keeps the heap's free top between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's upper limit for M_MMAP_THRESHOLD on 64-bit (4 MiB x sizeof(long)); larger values are refused.
MMAP_THRESHOLD_MAX = 32 * 2**20
# Free heap memory kept for reuse before the top of the heap is given back to the kernel. The decoder's
# stage outputs come in several sizes (16-30 MB), so freed blocks do not always fit the next request and
# the heap grows in steps; with a small threshold it is then trimmed by a few hundred MB and faulted in
# again. Measured with 2 threads at 60 s: 256 MiB gave 0.51 M faults (1.24 GB peak), 1 GiB 0.23 M
# (1.29 GB); at 150 s, 1 GiB leaves every window after the second without faults where 256 MiB gave up
# to 0.25 M per window. `release_freed_memory` gives the kept memory back once a whole conversion is done.
TRIM_THRESHOLD = 2**30
# Training: every step allocates and frees the same few GB, so the free top of the heap is kept whole
# (the largest value mallopt takes). Otherwise glibc hands about a GB back after each step and the next
# step faults it in again (~0.3 million faults, a few percent of a CPU step at the default config).
TRAINING_TRIM_THRESHOLD = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (which alone has these mallopt parameters), else None."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl and others: different allocator, nothing to set
    return libc


def reuse_freed_memory(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at its maximum and keep up to `trim_threshold` bytes of freed heap memory.

    Process-wide and idempotent. Returns whether the settings were applied (False on other C libraries,
    where the call changes nothing).
    """
    libc = _glibc()
    if libc is None:
        logger.debug("not glibc: allocator settings left as they are")
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    if not ok:
        logger.warning("glibc refused the allocator settings (mallopt); this process may run slower")
    return ok


def release_freed_memory() -> bool:
    """Give free heap memory back to the kernel now (glibc's malloc_trim); True when some was released.

    For the end of a conversion: a long-running process (the web UI) then does not keep the heap that
    `reuse_freed_memory` lets grow while a piece is synthesized.
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc.malloc_trim(0) == 1
