"""Giving the memory a round freed back to the system, where the C library keeps it (glibc).

glibc keeps memory freed by the program in its heaps for later allocations instead of returning
it: after a round of large messages, the replies' and gRPC's buffers (freed in thousands of
pieces, on several threads' heaps) stayed resident, 100-200 MB with 4 clients x 40 MB, and
counted again at the next round's peak. ``malloc_trim(0)`` returns it (10-20 ms there, once a
round). Other C libraries (musl, macOS) return large blocks themselves and have no such call:
there this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from collections.abc import Callable

GLIBC_SONAME = "libc.so.6"  # glibc's on every Linux architecture it supports


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    trim = ctypes.CDLL(GLIBC_SONAME).malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """``malloc_trim(0)`` on glibc; False (nothing done) elsewhere."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
