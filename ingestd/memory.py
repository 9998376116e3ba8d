"""Hand freed memory back to the system, so the resident size follows what is in use.

After a scan of thousands of files, or a settle pass over a large drop, the
interpreter and SQLite have freed what they used, but glibc's allocator keeps
the free pages (in the main heap and in one arena per thread that touched
them) and the resident size stays at the peak: over months it creeps up with
the number of files that passed. ``malloc_trim(0)`` returns those pages; it
costs about a millisecond, so the intake calls it once per scan. Where the C
library is not glibc (musl, say), it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc ``malloc_trim``); else nothing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
