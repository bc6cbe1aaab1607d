"""The C allocator's settings for a training process.

A CPU training step allocates and frees feature maps of a few MB each, dozens of times. glibc's malloc serves
many such blocks with fresh `mmap`s (or returns the freed top of its heap to the system), so each step keeps
touching new pages: on the 2-core virtual machine of docs/benchmarks.md about 3,000 page faults per
`epng-tiny` step, and 9% of its CPU time. Keeping freed memory in the heap brings that to about 200.
"""

from __future__ import annotations

import ctypes

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
_TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top returned to the system only beyond 1 GiB
_TOP_PAD = 64 << 20  # each growth of the heap asks for 64 MiB more (address space; pages are touched on use)


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of unmapping them; the
    process's later allocations of feature-map size then reuse touched pages. Returns False (and changes
    nothing) where the C library is not glibc."""
    try:  # the process's own symbols: the malloc it runs, without searching for a C library by name
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS), no dlopen(NULL) (Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        and mallopt(_M_TOP_PAD, _TOP_PAD)
    )
