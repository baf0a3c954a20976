"""Time as a dependency: the system clock in production, a hand-driven fake in tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Final, Protocol


class TimeSource(Protocol):
    """Wall time for timestamps, monotonic time for durations (what a stage needs)."""

    def time(self) -> float:
        """Unix wall-clock seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...


class Clock(TimeSource, Protocol):
    """A :class:`TimeSource` that can also sleep (for scheduling: ticker, elector)."""

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`monotonic` has reached ``deadline`` (at once if already past)."""
        ...


class SystemClock:
    """The real clocks: :func:`time.time` and :func:`time.monotonic`."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance`.

    Sleepers whose deadline has passed are woken by ``advance`` itself, in deadline order, so a
    test controls every tick without real sleeping. Monotonic time starts at 0.
    """

    def __init__(self, start_time: float = 1_700_000_000.0) -> None:
        self._wall_start = start_time
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._wall_start + self._now

    def monotonic(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        """Tasks currently waiting in :meth:`sleep_until`."""
        return sum(1 for _, _, waiter in self._sleepers if not waiter.done())

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            # Still a scheduling point, like asyncio.sleep(0), so a loop on a past deadline
            # cannot starve the event loop.
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), waiter))
        try:
            await waiter
        finally:
            waiter.cancel()

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake every sleeper whose deadline is now reached."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards ({seconds})")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_sleepers(self, count: int, *, max_iterations: int = 1000) -> None:
        """Yield to the event loop until at least ``count`` tasks sleep on this clock.

        Raises :class:`TimeoutError` after ``max_iterations`` loop iterations, so a test that
        waits for a sleeper that never comes fails instead of hanging.
        """
        for _ in range(max_iterations):
            if self.sleepers >= count:
                return
            await asyncio.sleep(0)
        raise TimeoutError(
            f"{self.sleepers} task(s) sleeping on the fake clock after {max_iterations} "
            f"loop iterations, expected {count}"
        )


SYSTEM_CLOCK: Final = SystemClock()
"""The one system clock, the default of every component that takes a clock."""
