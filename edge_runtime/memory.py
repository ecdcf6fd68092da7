"""The process's allocator, tuned for many cameras (``[runtime] malloc_arenas``).

glibc gives each new thread an arena of its own, up to eight per core. A camera thread decodes a
new 640x480 BGR frame (900 KB) per read; once glibc's dynamic mmap threshold has grown past that
size (it grows on the first free of an mmapped block), frames come from the decoding thread's
arena, and what a freed frame leaves there stays resident: with one arena per camera, about 1.2 MB
per camera that is free but not returned (measured: docs/performance.md). A cap on the number of
arenas makes the threads share a few, which reuse each other's freed frames. (A fixed mmap
threshold below the frame size saves more, 2.8 instead of 3.8 MB per camera, but every frame is
then mapped and unmapped: 16 cameras at 30 fps lost most of their throughput on the 2-core VM.)
Only glibc has ``mallopt``; elsewhere this does nothing (logged).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h


def set_arena_max(arenas: int) -> bool:
    """Let the threads share at most ``arenas`` malloc arenas (0: glibc's default, eight per
    core); True when set. Arenas already made stay: call before the source threads start."""
    if arenas <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name or "libc.so.6").mallopt
    except (OSError, AttributeError) as exc:
        log.debug("no mallopt in this C library (%s): the allocator is left as it is", exc)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("mallopt(M_ARENA_MAX, %d) was refused: the allocator is left as it is", arenas)
        return False
    return True
