"""Process-level settings that the jit-compiled steps need to run at speed on a host.

XLA:CPU allocates every intermediate buffer of a step (a gradient, an activation) with
malloc on each call. glibc serves a request above 32 MiB with a fresh mmap that the kernel
zero-fills page by page on first touch, and a thread outside the main arena falls back to
mmap whenever its 64 MiB heap cannot hold the request. So a model with one large parameter
(THIN's 32 experts: a 300 MB first-layer kernel) page-faults its whole gradient back in on
every step: measured 73,729 minor faults and 135 ms for a single 4608 x 16384 matmul output,
and the vmapped experts' train step 2.3x slower than the same experts split into 32 small
arrays. Serving all threads from one arena, without mmap and without trimming, lets
freed buffers be reused from the next step on, as accelerator runtimes' caching allocators do.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_tuned: bool | None = None


def tune_host_allocator() -> bool:
    """Makes glibc malloc keep and reuse large freed blocks (see the module docstring).

    Call it before JAX starts its threads (the CLI does, first thing). Returns whether the
    settings took effect: False off Linux/glibc or with FERGATE_HOST_ALLOCATOR=0. The cost
    is that the process keeps its peak heap until it exits, like any caching allocator.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("FERGATE_HOST_ALLOCATOR", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = [mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, 2**31 - 1)]
    _tuned = all(ok)
    return _tuned
