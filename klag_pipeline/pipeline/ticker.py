"""The per-cluster ticker: a cycle every ``interval``, skipping missed ticks, never bursting."""

from __future__ import annotations

import asyncio
import math

from klag_pipeline.events import CycleStarted
from klag_pipeline.pipeline.channel import Channel, ChannelClosed
from klag_pipeline.pipeline.clock import Clock

# Tolerance for float error in ``elapsed / interval`` so a tick hit exactly is not seen as missed.
_TICK_EPSILON = 1e-9


class Ticker:
    """Emits :class:`CycleStarted` at ``start``, ``start + interval``, ``start + 2·interval``…

    Ticks fall on a fixed grid, so cycles do not drift. When downstream is still busy with a
    cycle when later ticks come due (the send blocks), those ticks are skipped and counted in
    :attr:`skipped`; the next cycle starts at the next tick still in the future (or due exactly
    now). A backlog of cycles is never emitted in a burst: a late cycle is worth nothing once a
    fresher one can start.
    """

    def __init__(self, cluster: str, interval: float, clock: Clock) -> None:
        if not interval > 0:
            raise ValueError(f"ticker {cluster!r}: interval must be > 0, got {interval}")
        self._cluster = cluster
        self._interval = interval
        self._clock = clock
        self._skipped = 0
        self._emitted = 0
        self._stopped = False
        self._kicked = False
        self._out: Channel[CycleStarted] | None = None
        self._wake: asyncio.Future[None] | None = None

    @property
    def cluster(self) -> str:
        return self._cluster

    @property
    def skipped(self) -> int:
        """Ticks skipped because the previous cycle was still being handed downstream."""
        return self._skipped

    @property
    def emitted(self) -> int:
        """Cycles started so far (the last cycle number)."""
        return self._emitted

    def stop(self) -> None:
        """Make :meth:`run` return promptly and close its output channel (idempotent)."""
        self._stopped = True
        if self._out is not None:
            # Closing also releases a send blocked on a full channel (it raises ChannelClosed).
            self._out.close()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def kick(self) -> None:
        """Start a cycle now instead of at the next tick; later ticks follow on a grid that
        starts at the kicked cycle. Used when this instance becomes the leader, so collection
        starts at once. A kick while a cycle is being handed downstream starts the next one as
        soon as that hand-off is done."""
        self._kicked = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self, out: Channel[CycleStarted]) -> None:
        """Emit cycles into ``out`` until stopped or cancelled; ``out`` is closed on the way out."""
        self._out = out
        try:
            if self._stopped:
                return
            start = self._clock.monotonic()
            tick = 0
            while not self._stopped:
                # This cycle answers any kick made before it (including one before run()).
                self._kicked = False
                self._emitted += 1
                event = CycleStarted(
                    cluster=self._cluster,
                    cycle=self._emitted,
                    observed_at=self._clock.time(),
                    started_monotonic=self._clock.monotonic(),
                )
                try:
                    await out.send(event)
                except ChannelClosed:
                    return
                elapsed = self._clock.monotonic() - start
                due = max(tick + 1, math.ceil(elapsed / self._interval - _TICK_EPSILON))
                self._skipped += due - (tick + 1)
                tick = due
                await self._sleep_until(start + tick * self._interval)
                if self._kicked:
                    start = self._clock.monotonic()
                    tick = 0
        finally:
            out.close()

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep on the clock, but wake at once when :meth:`stop` or :meth:`kick` is called."""
        if self._stopped or self._kicked:
            return
        wake = self._wake = asyncio.get_running_loop().create_future()
        try:
            # The sleep is a task of a TaskGroup local to this call: it never outlives the await,
            # and a cancellation of the ticker cancels it too.
            async with asyncio.TaskGroup() as group:
                sleeper = group.create_task(self._clock.sleep_until(deadline))
                await asyncio.wait({sleeper, wake}, return_when=asyncio.FIRST_COMPLETED)
                sleeper.cancel()
        finally:
            self._wake = None
