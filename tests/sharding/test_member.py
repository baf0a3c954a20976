"""One replica's membership loop over a scripted coordinator (the real broker is in
test_replicas.py): keeping buckets through a short outage, dropping them once the session must
have expired, eviction, unreadable assignments, and leaving on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from klag_pipeline.kafka.membership import (
    Beat,
    Evicted,
    JoinAgain,
    Joined,
    MembershipError,
    Synced,
)
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.sharding.assignment import Layout
from klag_pipeline.sharding.member import ShardMember
from klag_pipeline.sharding.ownership import NOTHING, Ownership
from tests.support.waiting import wait_until

LAYOUT = Layout(("c1", "c2"), 8)
SESSION = 6.0


@dataclass
class ScriptedCoordinator:
    """A group of one: this member always leads. ``down`` makes every call fail;
    ``beats`` are the next heartbeat answers (then MEMBER)."""

    down: bool = False
    beats: list[Beat | Evicted] = field(default_factory=list)
    assignment_override: bytes | None = None
    joins: int = 0
    calls: int = 0
    left: list[str] = field(default_factory=list)
    closed: bool = False
    _assignments: dict[str, bytes] = field(default_factory=dict)

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise MembershipError("cluster c1: connection refused")

    async def join(self, member_id: str, metadata: bytes) -> Joined | JoinAgain:
        self._check()
        if not member_id:
            return JoinAgain("m-1")
        self.joins += 1
        return Joined(self.joins, member_id, member_id, ((member_id, metadata),))

    async def sync(
        self, generation: int, member_id: str, assignments: Sequence[tuple[str, bytes]]
    ) -> Synced | JoinAgain:
        self._check()
        self._assignments.update(assignments)
        return Synced(self.assignment_override or self._assignments[member_id])

    async def heartbeat(self, generation: int, member_id: str) -> Beat | Evicted:
        self._check()
        return self.beats.pop(0) if self.beats else Beat.MEMBER

    async def leave(self, member_id: str) -> None:
        self._check()
        self.left.append(member_id)

    async def close(self) -> None:
        self.closed = True


async def rounds(coordinator: ScriptedCoordinator, n: int) -> None:
    """Until the member has made ``n`` more calls (one per heartbeat round, 0.01 s apart)."""
    target = coordinator.calls + n
    await wait_until(lambda: coordinator.calls >= target, within=5, interval=0.005)


class Running:
    def __init__(self, coordinator: ScriptedCoordinator) -> None:
        self.clock = FakeClock()
        self.changes: list[Ownership] = []
        self.member = ShardMember(
            coordinator,
            identity="replica-1",
            group="shards",
            layout=LAYOUT,
            session_timeout=SESSION,
            heartbeat_interval=0.01,
            clock=self.clock,
            on_change=self._changed,
        )
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.member.run(self.stop))

    async def _changed(self, ownership: Ownership) -> None:
        self.changes.append(ownership)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


async def test_a_lone_member_owns_every_bucket_of_every_cluster() -> None:
    running = Running(ScriptedCoordinator())
    await wait_until(lambda: running.member.ownership is not NOTHING, within=5)
    ownership = running.member.ownership
    assert ownership.owned("c1") == frozenset(range(8)) == ownership.owned("c2")
    assert ownership.members == 1
    assert running.member.problem is None
    await running.finish()


async def test_buckets_are_kept_through_an_outage_shorter_than_the_session() -> None:
    coordinator = ScriptedCoordinator()
    running = Running(coordinator)
    await wait_until(lambda: running.member.ownership is not NOTHING, within=5)
    owned = running.member.ownership
    coordinator.down = True
    running.clock.advance(SESSION - 1)
    await rounds(coordinator, 5)  # failed heartbeats, all within the session
    assert running.member.ownership is owned
    coordinator.down = False
    await rounds(coordinator, 1)  # a heartbeat answered: the silence ended
    running.clock.advance(SESSION - 1)
    await rounds(coordinator, 5)
    assert running.member.ownership is owned
    assert running.changes == [owned]
    await running.finish()


async def test_buckets_are_dropped_once_the_session_must_have_expired_and_regained_after() -> None:
    coordinator = ScriptedCoordinator()
    running = Running(coordinator)
    await wait_until(lambda: running.member.ownership is not NOTHING, within=5)
    coordinator.down = True
    await rounds(coordinator, 2)
    running.clock.advance(SESSION)
    await wait_until(lambda: running.member.ownership is NOTHING, within=5)
    assert running.member.problem is not None
    assert "connection refused" in running.member.problem
    coordinator.down = False
    await wait_until(lambda: running.member.ownership is not NOTHING, within=5)
    assert running.member.problem is None
    assert [c is NOTHING for c in running.changes] == [False, True, False]
    await running.finish()


async def test_an_evicted_member_drops_its_buckets_before_rejoining() -> None:
    coordinator = ScriptedCoordinator(beats=[Evicted("", "UNKNOWN_MEMBER_ID")])
    running = Running(coordinator)
    await wait_until(lambda: len(running.changes) >= 3, within=5)
    assert [c is NOTHING for c in running.changes[:3]] == [False, True, False]
    await running.finish()


async def test_an_unreadable_assignment_owns_nothing_and_says_why() -> None:
    running = Running(ScriptedCoordinator(assignment_override=b"not json"))
    await wait_until(lambda: running.member.problem != "not yet assigned", within=5)
    assert running.member.ownership is NOTHING
    assert "unreadable assignment" in (running.member.problem or "")
    await running.finish()


async def test_shutdown_leaves_the_group_and_drops_everything() -> None:
    coordinator = ScriptedCoordinator()
    running = Running(coordinator)
    await wait_until(lambda: running.member.ownership is not NOTHING, within=5)
    await running.finish()
    assert coordinator.left == ["m-1"]
    assert coordinator.closed
    assert running.member.ownership is NOTHING
    assert running.changes[-1] is NOTHING
