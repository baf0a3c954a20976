"""Discovery: list every group on every broker, keep the filtered ones, describe them."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from klag_pipeline.errors import KafkaError, KafkaTimeoutError
from klag_pipeline.events import CycleStarted, GroupsDiscovered
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.model import EXPORTER_PROTOCOL_TYPES, GroupState, ListedGroup
from klag_pipeline.pipeline.clock import SYSTEM_CLOCK, TimeSource
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
        clock: TimeSource = SYSTEM_CLOCK,
        backoff: ConnectionBackoff | None = None,
        on_cycle_start: Callable[[], None] | None = None,
        recheck_for: float = math.inf,
    ) -> None:
        """``on_cycle_start`` is told about every attempt (the liveness signal of ``/health``).
        ``recheck_for``: how long (seconds) a group that vanished from the listing without
        confirmation is asked about again (the staleness threshold: its kept values expire
        then anyway)."""
        self._recheck_for = recheck_for
        # Groups kept last cycle (and vanished ones still unconfirmed), with the monotonic time
        # since which each has been unconfirmed (None: listed and described normally).
        self._known: dict[str, tuple[ListedGroup, float | None]] = {}
        self._on_cycle_start = on_cycle_start
        self._client = client
        self._cluster = cluster
        self._clock = clock
        self._backoff = backoff or ConnectionBackoff(monotonic=clock.monotonic)
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
        started = self._clock.monotonic()
        if self._on_cycle_start is not None:
            self._on_cycle_start()
        # A tick may have waited for a busy pipeline: the cycle starts now, not when it ticked.
        event = replace(event, observed_at=self._clock.time(), started_monotonic=started)
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
            if g.protocol_type not in EXPORTER_PROTOCOL_TYPES
            and self._cluster.keeps_group(g.group_id)
        ]
        # A group that was there last cycle and is missing from this listing is asked about
        # directly: a broker that has not loaded its group metadata yet (resuming after a hang,
        # a coordinator moving) lists nothing, with no error. Only its coordinator saying so
        # (not found, or Dead) makes a group gone.
        listed_ids = {g.group_id for g in kept}
        vanished = [
            listed
            for group_id, (listed, since) in self._known.items()
            if group_id not in listed_ids
            and (since is None or started - since <= self._recheck_for)
        ]
        described = await self._client.describe_groups([*kept, *vanished])
        groups = dict(described.groups)
        uncertain: set[str] = set()
        known: dict[str, tuple[ListedGroup, float | None]] = {}
        for group in kept:
            if group.group_id in groups:
                known[group.group_id] = (group, None)
            elif group.group_id not in described.gone:
                uncertain.add(group.group_id)
                known[group.group_id] = (group, started)
        for group in vanished:
            description = groups.get(group.group_id)
            if description is not None and description.state is not GroupState.DEAD:
                known[group.group_id] = (replace(group, coordinator=description.coordinator), None)
                continue
            groups.pop(group.group_id, None)
            if description is None and group.group_id not in described.gone:
                uncertain.add(group.group_id)
                since = self._known[group.group_id][1]
                known[group.group_id] = (group, started if since is None else since)
        self._known = known
        return GroupsDiscovered(
            start=event,
            groups=MappingProxyType(dict(sorted(groups.items()))),
            failures=listing.failures + described.failures,
            kafka_seconds=self._clock.monotonic() - started,
            observed_at=self._clock.time(),
            uncertain=frozenset(uncertain),
        )
