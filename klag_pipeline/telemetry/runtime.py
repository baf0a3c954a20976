"""Process-level tuning for a long-running exporter: allocator, cyclic GC and GIL hand-offs.

Measured on the ``large`` benchmark (2,000 groups, 20,000 group partitions; docs/benchmarks.md):

* **glibc arenas** — the worker threads that render, calculate and decode each allocate from
  their own malloc arena, and memory freed in one arena is not reusable by another nor returned
  to the system: about a third of the peak RSS was arena fragmentation. :func:`tune_process`
  caps the arenas at 2 (``mallopt(M_ARENA_MAX)``, the same as ``MALLOC_ARENA_MAX=2``, but set by
  the process itself so no deployment can forget it) and :func:`release_free_memory` hands freed
  pages back after each render (``malloc_trim``). Blocks of 1 MiB and more (Fetch responses,
  rendered chunks) always come from ``mmap`` (``M_MMAP_THRESHOLD``; glibc would
  otherwise raise the threshold up to 32 MiB after the first large free and serve them from the
  heap, where a freed multi-MB block keeps the heap from shrinking): they go back to the system
  the moment they are freed.
* **cyclic GC** — a full collection walked every object the imports created on top of the
  cycle's own rows. :func:`settle_heap` freezes what exists once the exporter is set up
  (``gc.freeze``), so collections only walk what the cycles allocate (longest pause per run:
  42–62 ms before, 24–51 ms since). Frozen objects are still freed by reference counting.
  The youngest generation is then collected every 50,000 allocations instead of 700
  (:data:`GC_YOUNG_THRESHOLD`): a cycle's rows, health results and keys live until the next
  cycle, and with 700 they filled the oldest generation within a cycle, so a full collection
  (~0.1–0.2 s with the GIL held) ran about once a cycle. Issue 17, ``large``: CPU per steady
  cycle 2.29 → 1.52 s, the event loop's longest stall 283 → 151 ms.
* **GIL switch interval** — while a worker thread renders or calculates, the event loop thread
  waits up to the switch interval (5 ms by default) to get the GIL back after every system call,
  and a scrape makes several: 20 simultaneous scrapes during a render queued for up to 240 ms.
  0.25 ms brought that to ~55 ms (1 ms: ~90 ms) at no measurable cost in CPU per cycle.

Everything here is best effort: on a platform without glibc the allocator calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import cache

ARENA_MAX = 2
SWITCH_INTERVAL_SECONDS = 0.00025
MMAP_THRESHOLD_BYTES = 1024 * 1024
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter numbers of M_ARENA_MAX and M_MMAP_THRESHOLD in glibc's malloc.h."""


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):  # not glibc (musl has neither mallopt nor malloc_trim)
        return None
    return libc


GC_YOUNG_THRESHOLD = 50_000
"""Net allocations of tracked objects between two young collections (CPython: 700). A cycle at
the large preset makes hundreds of thousands of rows, health results and keys that all live
until the next cycle; with 700, the oldest generation filled with them within a cycle and a
full collection (~0.1–0.2 s holding the GIL, at 200,000 tracked objects) ran about once a
cycle. Only reference cycles wait longer to be freed; everything else goes by reference count."""


def tune_process() -> bool:
    """Call once at start-up, before any thread exists (arenas are created per thread).

    Returns whether the allocator accepted both settings (False without glibc)."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    libc = _glibc()
    if libc is None:
        return False
    arenas: bool = libc.mallopt(_M_ARENA_MAX, ARENA_MAX) == 1
    mmap: bool = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return arenas and mmap


def settle_heap() -> None:
    """Call once the exporter is set up: collect, then exclude what survived from later GCs, and
    collect the youngest generation every ``GC_YOUNG_THRESHOLD`` allocations instead of 700."""
    # The two younger generations only (~1 ms): a full collection walks every object the imports
    # made (~60,000), 25-75 ms on the way to the first cycle, and in serve() found nothing this
    # one had not (0 unreachable objects, measured): the imports' own collections ran already.
    gc.collect(1)
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def release_free_memory() -> bool:
    """Return freed heap pages to the system (after a large transient, e.g. a render).

    Returns whether any memory was released."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1
