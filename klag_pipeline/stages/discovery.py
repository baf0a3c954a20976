"""Discovery: list every group on every broker, keep the filtered ones, describe them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from klag_pipeline.errors import KafkaError, KafkaTimeoutError
from klag_pipeline.events import CycleStarted, GroupsDiscovered
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.model import LEADERSHIP_PROTOCOL_TYPE
from klag_pipeline.settings.schema import ClusterSettings


class ConnectionBackoff:
    """Exponential back-off for (re)connecting a cluster: no retry storm against a broker that
    refuses us (wrong credentials, down), yet a quick first retry for a blip."""

    def __init__(
        self,
        *,
        initial: float = 1.0,
        maximum: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._monotonic = monotonic
        self._delay = 0.0
        self._not_before = 0.0
        self.last_error: KafkaError | None = None

    def allowed(self) -> bool:
        return self._monotonic() >= self._not_before

    def failed(self, error: KafkaError) -> None:
        self._delay = min(self._maximum, self._delay * 2 if self._delay else self._initial)
        self._not_before = self._monotonic() + self._delay
        self.last_error = error

    def succeeded(self) -> None:
        self._delay = 0.0
        self._not_before = 0.0
        self.last_error = None


class BackingOff(KafkaError):
    """The cluster failed recently; this cycle does not touch it (see ConnectionBackoff)."""


class DiscoveryStage:
    name = "discovery"

    def __init__(
        self,
        client: ClusterClient,
        cluster: ClusterSettings,
        *,
        time_fn: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        backoff: ConnectionBackoff | None = None,
        on_cycle_start: Callable[[], None] | None = None,
    ) -> None:
        """``on_cycle_start`` is told about every attempt (the liveness signal of ``/health``)."""
        self._on_cycle_start = on_cycle_start
        self._client = client
        self._cluster = cluster
        self._time = time_fn
        self._monotonic = monotonic
        self._backoff = backoff or ConnectionBackoff(monotonic=monotonic)
        self._connected = False

    async def _ensure_connected(self) -> None:
        if self._connected:
            return
        if not self._backoff.allowed():
            last = self._backoff.last_error
            raise BackingOff(f"backing off after: {last}", broker=last.broker if last else None)
        try:
            await self._client.connect()
        except KafkaError as exc:
            self._backoff.failed(exc)
            raise
        except (asyncio.CancelledError, TimeoutError):
            # The cycle deadline cut the attempt short (a slow handshake, a silent broker): that
            # is a failure too, or such a cluster would be re-dialled every cycle.
            self._backoff.failed(KafkaTimeoutError("connect did not finish within the cycle"))
            raise
        self._backoff.succeeded()
        self._connected = True

    async def process(self, event: CycleStarted) -> GroupsDiscovered:
        started = self._monotonic()
        if self._on_cycle_start is not None:
            self._on_cycle_start()
        # A tick may have waited for a busy pipeline: the cycle starts now, not when it ticked.
        event = replace(event, observed_at=self._time(), started_monotonic=started)
        await self._ensure_connected()
        try:
            listing = await self._client.list_groups()
        except KafkaError as exc:
            # Nothing at all answered: treat as a lost connection so auth/network trouble backs off.
            self._backoff.failed(exc)
            self._connected = False
            raise
        kept = [
            g
            for g in listing.groups
            if g.protocol_type != LEADERSHIP_PROTOCOL_TYPE and self._cluster.keeps_group(g.group_id)
        ]
        described = await self._client.describe_groups(kept)
        return GroupsDiscovered(
            start=event,
            groups=MappingProxyType(dict(sorted(described.groups.items()))),
            failures=listing.failures + described.failures,
            kafka_seconds=self._monotonic() - started,
            observed_at=self._time(),
        )
