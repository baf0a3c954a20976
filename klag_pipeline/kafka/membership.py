"""The seam between the ``kafka`` leadership provider and a classic group's coordinator.

The provider keeps the election state (member id, generation, who leads); a
:class:`GroupMembership` holds the connection and knows where the group's coordinator is, and
turns each answer into one of the typed results below. Every error code a caller does not act
on becomes a :class:`MembershipError` whose message already names the cluster.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from klag_pipeline.errors import KafkaError


class MembershipError(KafkaError):
    """The coordinator could not be found, reached or used; the message says which and where."""


class SessionTimeoutRejected(MembershipError):
    """JoinGroup answered INVALID_SESSION_TIMEOUT: the session is outside the broker's bounds."""


@dataclass(frozen=True, slots=True)
class MembershipTiming:
    """How long the coordinator and each request may take (the provider derives them)."""

    session_ms: int
    rebalance_ms: int
    request_seconds: float
    """FindCoordinator, Heartbeat and LeaveGroup."""
    join_seconds: float
    """JoinGroup and SyncGroup: the coordinator holds them until every member rejoined."""


@dataclass(frozen=True, slots=True)
class Joined:
    """A generation was formed; ``leader`` is the member id the coordinator chose to lead."""

    generation: int
    leader: str
    member_id: str
    members: tuple[tuple[str, bytes], ...]
    """(member id, JoinGroup metadata) of every member; sent to the leader only."""


@dataclass(frozen=True, slots=True)
class Synced:
    assignment: bytes


@dataclass(frozen=True, slots=True)
class JoinAgain:
    """Send another JoinGroup, with ``member_id`` (newly assigned, kept, or "" after a reset)."""

    member_id: str


class Beat(enum.Enum):
    MEMBER = "member"
    """Still a member of the current generation."""
    REBALANCING = "rebalancing"
    """A rebalance started: join again now to stay in the group."""


@dataclass(frozen=True, slots=True)
class Evicted:
    """The coordinator no longer counts this member (ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID)."""

    member_id: str
    """The member id to join with next ("" when the coordinator forgot ours)."""
    reason: str
    """The Kafka error name."""


class GroupMembership(Protocol):
    """One member's conversation with one group's coordinator; calls never overlap.

    Each call connects and looks the coordinator up first when needed; a lost connection or a
    moved coordinator is forgotten so that the next call starts over.
    """

    async def join(self, member_id: str, metadata: bytes) -> Joined | JoinAgain: ...

    async def sync(
        self, generation: int, member_id: str, assignments: Sequence[tuple[str, bytes]]
    ) -> Synced | JoinAgain:
        """``assignments``: (member id, bytes) for every member when leading, else empty."""
        ...

    async def heartbeat(self, generation: int, member_id: str) -> Beat | Evicted: ...

    async def leave(self, member_id: str) -> None:
        """LeaveGroup, only when connected to a known coordinator; an unknown member is fine."""
        ...

    async def close(self) -> None: ...


JOIN_ATTEMPTS = 4
"""A join round may be answered MEMBER_ID_REQUIRED, then land in a rebalance that another
member's join restarts; more than this many tries in one round means something is wrong."""


@dataclass(frozen=True, slots=True)
class Settled:
    """A generation this member joined and synced: ``assignment`` is what the leader gave it."""

    joined: Joined
    member_id: str
    assignment: bytes

    @property
    def leading(self) -> bool:
        return self.joined.leader == self.member_id


async def join_and_sync(
    membership: GroupMembership,
    member_id: str,
    metadata: bytes,
    plan: Callable[[Joined], Sequence[tuple[str, bytes]]],
) -> Settled | JoinAgain:
    """JoinGroup, then SyncGroup, until a generation settles or :data:`JOIN_ATTEMPTS` rounds
    passed (then ``JoinAgain`` with the member id to use next). ``plan`` gives the leader's
    assignments for every member; it is called only when this member leads."""
    for _ in range(JOIN_ATTEMPTS):
        joined = await membership.join(member_id, metadata)
        member_id = joined.member_id
        if isinstance(joined, JoinAgain):
            continue
        assignments = plan(joined) if joined.leader == member_id else ()
        synced = await membership.sync(joined.generation, member_id, assignments)
        if isinstance(synced, JoinAgain):
            member_id = synced.member_id
            continue
        return Settled(joined, member_id, synced.assignment)
    return JoinAgain(member_id)
