"""Cooperative iteration for per-row work that runs on the event loop.

A stage that walks 20,000 group partitions in one go holds the loop for tens of milliseconds,
and every scrape and probe that arrives meanwhile waits. :func:`paced` hands control back to
the loop every ``every`` items, so such a walk costs other tasks a few milliseconds at most.
Worker threads are no alternative for short walks: while one holds the GIL, the loop waits for
it after every system call (docs/benchmarks.md, "GIL hand-offs").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_EVERY = 200
"""Items between two yields: a group's offsets or a partition row takes microseconds, so a
slice stays around a millisecond or two."""


async def paced(items: Iterable[T], every: int = DEFAULT_EVERY) -> AsyncIterator[T]:
    """Iterate ``items``, letting the event loop run other ready tasks after every ``every``."""
    if every <= 0:
        raise ValueError("every must be positive")
    countdown = every
    for item in items:
        yield item
        countdown -= 1
        if not countdown:
            countdown = every
            await asyncio.sleep(0)


__all__ = ["DEFAULT_EVERY", "paced"]
