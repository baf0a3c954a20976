"""Waiting for a condition with a deadline: the one polling loop of the test suite.

Tests wait for something another task, thread or process makes true (a broker back, a cycle
written, a leader elected). Every such wait polls with this helper, so each test says only what it
waits for, how long and how often. Loops that run *for* a duration (fuzzing, "no flapping for
10 s") and waits on an event rather than a poll are not this and are written where they are.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    condition: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    within: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
    details: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` (plain or async) every ``interval`` seconds until it returns something
    truthy, and return that; AssertionError once ``within`` seconds have passed without.

    ``message`` names what was awaited. ``details`` is called only on failure, for what is known
    only then (logs, the last state seen); a last result other than False/None is shown too.
    """
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            last = "" if result is None or result is False else f" (last: {result!r})"
            more = "" if details is None else f"\n{details()}"
            raise AssertionError(f"{message} not reached within {within:g}s{last}{more}")
        await asyncio.sleep(interval)
