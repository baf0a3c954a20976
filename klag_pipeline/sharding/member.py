"""One replica's membership of the sharding group: join, heartbeat, follow the assignment.

The replicas join one classic group (``[exporter.sharding] group_id``) with the protocol type
``klag-pipeline-shard`` and no topic subscription. The member the coordinator makes leader
computes everyone's buckets (:func:`klag_pipeline.sharding.assignment.assign`) and hands them
out in SyncGroup. Each member then:

* heartbeats every ``heartbeat_interval``; a heartbeat answered ``REBALANCE_IN_PROGRESS``
  rejoins at once. It keeps exporting what it owns while the rebalance runs (no eager
  revocation): the new assignment arrives at every member in the same SyncGroup round, and a
  bucket's new owner collects it from its next cycle, by which time the old owner has dropped it;
* drops everything it owns once ``session_timeout`` has passed since the last heartbeat the
  coordinator answered (counted from when it was sent): by then the coordinator has evicted it and
  others may own its buckets. It never falls back to collecting everything;
* on shutdown sends LeaveGroup, so the others rebalance at once instead of after the session
  timeout.

``on_change`` receives every new :class:`Ownership` (the gate withdraws lost series and starts a
cycle for gained ones); ``problem`` is the reason this replica owns nothing, or None.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import MappingProxyType

import structlog

from klag_pipeline.kafka.membership import (
    JOIN_ATTEMPTS,
    Beat,
    GroupMembership,
    JoinAgain,
    Joined,
    MembershipError,
    SessionTimeoutRejected,
    join_and_sync,
)
from klag_pipeline.pipeline.clock import TimeSource
from klag_pipeline.sharding.assignment import (
    Assignment,
    Layout,
    MalformedShardData,
    MemberMetadata,
    Unit,
    assign,
    decode_assignment,
    decode_metadata,
    encode_assignment,
    encode_metadata,
)
from klag_pipeline.sharding.ownership import NOTHING, Ownership

log = structlog.get_logger("klag_pipeline.sharding")

OnChange = Callable[[Ownership], Awaitable[None]]


class ShardMember:
    def __init__(
        self,
        membership: GroupMembership,
        *,
        identity: str,
        group: str,
        layout: Layout,
        session_timeout: float,
        heartbeat_interval: float,
        clock: TimeSource,
        on_change: OnChange,
    ) -> None:
        self.identity = identity
        self._membership = membership
        self._group = group
        self._layout = layout
        self._session_timeout = session_timeout
        self._heartbeat_interval = heartbeat_interval
        self._clock = clock
        self._on_change = on_change
        self._member_id = ""
        self._generation = -1
        self._sticky: frozenset[Unit] = frozenset()
        self.ownership: Ownership = NOTHING
        self.problem: str | None = "not yet assigned"

    async def run(self, stop: asyncio.Event) -> None:
        last_answered = self._clock.monotonic()
        try:
            while not stop.is_set():
                sent = self._clock.monotonic()
                try:
                    await self._round()
                except MembershipError as exc:
                    await self._failed(exc, sent_since=last_answered)
                else:
                    last_answered = sent
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._heartbeat_interval)
        finally:
            await self._leave()

    # -- internals ------------------------------------------------------------------------------

    async def _round(self) -> None:
        if self._generation < 0:
            await self._join()
            return
        beat = await self._membership.heartbeat(self._generation, self._member_id)
        if beat is Beat.MEMBER:
            return
        if beat is Beat.REBALANCING:
            await self._join()
            return
        # Evicted: another member may own our buckets already.
        log.warning("sharding_membership_lost", group=self._group, error=beat.reason)
        self._member_id = beat.member_id
        self._generation = -1
        await self._set(NOTHING, f"evicted from group {self._group} ({beat.reason}); rejoining")
        await self._join()

    async def _failed(self, exc: MembershipError, *, sent_since: float) -> None:
        silent = self._clock.monotonic() - sent_since
        reason = str(exc)
        if isinstance(exc, SessionTimeoutRejected):
            reason += (
                f": session_timeout {self._session_timeout:g} s is outside the broker's "
                "group.min.session.timeout.ms / group.max.session.timeout.ms"
            )
        if self.ownership is not NOTHING and silent < self._session_timeout:
            log.warning(
                "sharding_coordinator_unreachable",
                group=self._group,
                error=reason,
                keeps_buckets_for=round(self._session_timeout - silent, 1),
            )
            return
        if self.ownership is not NOTHING:
            log.warning(
                "sharding_buckets_dropped",
                group=self._group,
                error=reason,
                silent_seconds=round(silent, 1),
            )
            self._generation = -1
        elif self.problem != reason:
            log.warning("sharding_join_failed", group=self._group, error=reason)
        await self._set(NOTHING, reason)

    async def _join(self) -> None:
        self._generation = -1
        metadata = encode_metadata(MemberMetadata(self.identity, self._layout, self._sticky))
        settled = await join_and_sync(self._membership, self._member_id, metadata, self._plan)
        self._member_id = settled.member_id
        if isinstance(settled, JoinAgain):
            raise MembershipError(
                f"group {self._group} did not settle after {JOIN_ATTEMPTS} join attempts"
            )
        self._generation = settled.joined.generation
        await self._assigned(settled.joined.generation, settled.assignment)

    def _plan(self, joined: Joined) -> list[tuple[str, bytes]]:
        """As the leader: every member's buckets."""
        members: list[tuple[str, MemberMetadata]] = []
        for member_id, raw in joined.members:
            try:
                members.append((member_id, decode_metadata(raw)))
            except MalformedShardData as exc:
                # Not one of ours (or a future version): it gets nothing and says why.
                log.warning("sharding_member_unreadable", member=member_id, error=str(exc))
                members.append((member_id, MemberMetadata("", Layout((), 0), frozenset())))
        plan = assign(members, self._layout, self.identity)
        log.info(
            "sharding_assigned",
            group=self._group,
            generation=joined.generation,
            members={meta.identity or mid: len(plan[mid].units) for mid, meta in members},
        )
        return [(mid, encode_assignment(plan[mid])) for mid, _ in members]

    async def _assigned(self, generation: int, raw: bytes) -> None:
        try:
            assignment = decode_assignment(raw)
        except MalformedShardData as exc:
            raise MembershipError(f"group {self._group}: unreadable assignment: {exc}") from exc
        if assignment.refused:
            await self._set(NOTHING, f"the leader ({assignment.leader}) {assignment.refused}")
            return
        self._sticky = assignment.units
        ownership = _ownership(generation, assignment)
        log.info(
            "sharding_buckets",
            group=self._group,
            generation=generation,
            members=assignment.members,
            leader=assignment.leader,
            buckets={c: len(b) for c, b in ownership.units.items()},
        )
        await self._set(ownership, None)

    async def _set(self, ownership: Ownership, problem: str | None) -> None:
        self.problem = problem
        if ownership == self.ownership:
            return
        self.ownership = ownership
        await self._on_change(ownership)

    async def _leave(self) -> None:
        member, self._member_id = self._member_id, ""
        self._generation = -1
        with contextlib.suppress(MembershipError):
            if member:
                await self._membership.leave(member)
        await self._set(NOTHING, "shutting down")
        await self._membership.close()


def _ownership(generation: int, assignment: Assignment) -> Ownership:
    return Ownership(
        generation=generation,
        buckets=assignment.buckets,
        units=MappingProxyType(assignment.by_cluster()),
        members=assignment.members,
    )
