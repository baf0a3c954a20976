"""The early publication of a cluster's first cycle: its offsets before the cold timestamp pass.

With a cold timestamp cache the first cycle's timestamp pass is the longest part of start-up (at
2,000 groups, ~3,000 record reads and ~23 MB of Fetch). Everything else the first scrape needs —
committed offsets, watermarks, offset lag, group state, loss figures — is known once the
watermarks are listed. So, until the cluster's first complete snapshot has been published,
:class:`EarlyOffsetsStage` (between the watermarks and the timestamp stage) hands every cycle
that has a lagging commit to :meth:`EarlyPublication.offer`, which calculates a *partial*
snapshot (the calculation without timestamps, ``ClusterSnapshot.partial``; off the event loop)
and publishes it, before the timestamp pass starts (the exporter also lets the pass wait, bounded,
until /metrics carries it: its rendering then has the CPU to itself).
:meth:`EarlyPublication.publish_complete` publishes complete snapshots under the same lock and
ends early publication for good.

So the sinks see, per cluster, at most one partial snapshot per cycle, all of them before the
first complete one, and each publication replaces the whole cluster: no scrape mixes two cycles.
Which sinks take a partial snapshot is the fan-out's business (Prometheus only); what the first
scrape contains is documented in docs/pipeline.md ("The first scrape").
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

from klag_pipeline import lag
from klag_pipeline.events import TimestampsSampled, WatermarksListed
from klag_pipeline.pipeline.clock import TimeSource
from klag_pipeline.snapshot import ClusterSnapshot

Publish = Callable[[ClusterSnapshot], Awaitable[None]]


def partial_snapshot(
    event: WatermarksListed, labels: Mapping[str, str], now: float
) -> ClusterSnapshot:
    """The calculation of ``event``'s cycle without its timestamp pass: every offset, watermark,
    lag and group state exactly as the complete snapshot will have them, no time lag."""
    sampled = TimestampsSampled(
        watermarks=event,
        samples=MappingProxyType({}),
        enabled=False,
        failures=(),
        kafka_seconds=0.0,
        observed_at=event.observed_at,
    )
    snapshot = lag.calculate(
        sampled, labels=labels, now=now, duration_seconds=0.0, poll_time_ms=0.0
    )
    return dataclasses.replace(snapshot, partial=True)


def has_lagging_commit(event: WatermarksListed) -> bool:
    """Whether the timestamp pass has anything to read (a commit below its high watermark)."""
    watermarks = event.watermarks
    for offsets in event.offsets.committed.values():
        for tp, committed in offsets.items():
            marks = watermarks.get(tp)
            if marks is not None and committed < marks.high:
                return True
    return False


class EarlyPublication:
    """One cluster's early publication (see the module docstring)."""

    def __init__(
        self,
        labels: Mapping[str, str],
        clock: TimeSource,
        *,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``settle``: awaited after a partial snapshot has been handed over and before
        :meth:`offer` returns, i.e. before the timestamp pass starts (the exporter waits there
        until /metrics carries it, so that its rendering has the CPU to itself)."""
        self._labels = MappingProxyType(dict(labels))
        self._clock = clock
        self._settle = settle
        self._lock = asyncio.Lock()
        self._done = False
        self._publish: Publish | None = None
        self.published = 0
        """Partial snapshots published so far."""

    @property
    def done(self) -> bool:
        """Whether a complete snapshot has been published (no early publication any more)."""
        return self._done

    def connect(self, publish: Publish) -> None:
        """Where partial snapshots go (the cluster pipeline's publication)."""
        self._publish = publish

    async def offer(self, event: WatermarksListed) -> None:
        """Publish ``event``'s partial snapshot, unless a complete snapshot has been published,
        the timestamp pass has nothing to read, or nothing is connected."""
        publish = self._publish
        if self._done or publish is None or not has_lagging_commit(event):
            return
        snapshot = await asyncio.to_thread(
            partial_snapshot, event, self._labels, self._clock.time()
        )
        async with self._lock:
            if self._done:
                return
            await publish(snapshot)
            self.published += 1
        if self._settle is not None:
            await self._settle()

    async def publish_complete(self, snapshot: ClusterSnapshot, publish: Publish) -> None:
        """Publish a complete snapshot; no partial one is published after it."""
        async with self._lock:
            self._done = True
            await publish(snapshot)


class EarlyOffsetsStage:
    """``WatermarksListed`` → the same event, once the early publication has had it."""

    name = "early_offsets"

    def __init__(self, offer: Callable[[WatermarksListed], Awaitable[None]]) -> None:
        self._offer = offer

    async def process(self, event: WatermarksListed) -> WatermarksListed:
        await self._offer(event)
        return event
