"""The ``kafka`` leadership provider: Kafka's own group membership picks the active exporter.

Every replica joins one dedicated classic group (named by ``lease_name``) with the protocol
type ``klag-pipeline-leader`` and no topic subscription, the way Kafka Connect and Schema
Registry elect a leader. The **group leader the coordinator chooses** is the active exporter.
The coordinator keeps the leader for as long as that member stays in the group and picks a new
one only when it leaves or its session expires, so a rebalance caused by a standby joining or
dying never moves leadership. (Choosing "the smallest member id" instead would move leadership
whenever a replica with a smaller random id joins.)

* session timeout = ``lease_duration``: a leader killed without a word is evicted after it;
* a heartbeat every ``retry_period`` (one per election round); a heartbeat answered
  ``REBALANCE_IN_PROGRESS`` rejoins in the same round;
* rebalance timeout = ``lease_duration``: how long the coordinator waits for members to rejoin;
* the JoinGroup metadata carries each member's identity, and the leader's SyncGroup hands every
  member the leader's identity, so standbys can name the leader;
* ``release`` sends LeaveGroup: the coordinator rebalances at once and a standby leads within
  about one ``retry_period``.

Requests are encoded here with the codec primitives of :mod:`klag_pipeline.kafka.protocol` and
sent over the same :class:`~klag_pipeline.kafka.adapter.transport.Transport` the collection path
uses (aiokafka as a byte mover).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final

import structlog

from klag_pipeline.errors import KafkaConnectionError, KafkaError
from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.kafka.errors import COORDINATOR_MOVED, error_name
from klag_pipeline.kafka.protocol import (
    FIND_COORDINATOR,
    ApiSpec,
    Reader,
    Writer,
    decode_find_coordinator,
    encode_find_coordinator,
)
from klag_pipeline.leadership import LeadershipError
from klag_pipeline.model import LEADERSHIP_PROTOCOL_TYPE
from klag_pipeline.settings.schema import ClusterSettings, LeadershipSettings, PerformanceSettings

log = structlog.get_logger("klag_pipeline.leadership")

PROTOCOL_TYPE: Final = LEADERSHIP_PROTOCOL_TYPE
PROTOCOL_NAME: Final = "klag-pipeline-leader-v1"

# Version ranges implemented below (Kafka 2.3+; 4.x removed JoinGroup v0-v1 only).
JOIN_GROUP: Final = ApiSpec("JoinGroup", 11, 5, 9, 6)
HEARTBEAT: Final = ApiSpec("Heartbeat", 12, 3, 4, 4)
LEAVE_GROUP: Final = ApiSpec("LeaveGroup", 13, 3, 5, 4)
SYNC_GROUP: Final = ApiSpec("SyncGroup", 14, 3, 5, 4)

ILLEGAL_GENERATION: Final = 22
UNKNOWN_MEMBER_ID: Final = 25
INVALID_SESSION_TIMEOUT: Final = 26
REBALANCE_IN_PROGRESS: Final = 27
MEMBER_ID_REQUIRED: Final = 79

# A join round may be answered MEMBER_ID_REQUIRED, then land in a rebalance that another
# member's join restarts; more than this many tries in one round means something is wrong.
_JOIN_ATTEMPTS = 4


class _Writer(Writer):
    __slots__ = ()

    def raw_bytes(self, value: bytes) -> _Writer:
        # BYTES / COMPACT_BYTES share the array length prefix (int32, or uvarint(len + 1)).
        self.array_length(len(value))
        self._parts.append(value)
        return self


# -- codecs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinGroupResponse:
    throttle_ms: int
    error_code: int
    generation_id: int
    protocol_name: str | None
    leader: str
    member_id: str
    members: tuple[tuple[str, bytes], ...]


def encode_join_group(
    version: int,
    group: str,
    *,
    session_ms: int,
    rebalance_ms: int,
    member_id: str,
    metadata: bytes,
    reason: str | None = None,
) -> bytes:
    w = _Writer(JOIN_GROUP.flexible(version))
    w.string(group).int32(session_ms).int32(rebalance_ms).string(member_id)
    w.string(None)  # group_instance_id: dynamic membership
    w.string(PROTOCOL_TYPE)
    w.array_length(1)
    w.string(PROTOCOL_NAME)
    w.raw_bytes(metadata).tags()
    if version >= 8:
        w.string(reason)
    w.tags()
    return w.getvalue()


def decode_join_group(version: int, data: bytes) -> JoinGroupResponse:
    r = Reader(data, JOIN_GROUP.flexible(version))
    throttle, error_code, generation = r.int32(), r.int16(), r.int32()
    if version >= 7:
        r.nullable_string()  # protocol_type
    protocol_name = r.nullable_string()
    leader = r.string()
    if version >= 9:
        r.boolean()  # skip_assignment: static members only
    member_id = r.string()
    members = []
    for _ in range(r.array_length(4)):
        mid = r.string()
        r.nullable_string()  # group_instance_id
        metadata = r.nullable_bytes() or b""
        r.skip_tags()
        members.append((mid, metadata))
    r.skip_tags()
    return JoinGroupResponse(
        throttle, error_code, generation, protocol_name, leader, member_id, tuple(members)
    )


@dataclass(frozen=True, slots=True)
class SyncGroupResponse:
    throttle_ms: int
    error_code: int
    assignment: bytes


def encode_sync_group(
    version: int,
    group: str,
    *,
    generation: int,
    member_id: str,
    assignments: Sequence[tuple[str, bytes]],
) -> bytes:
    w = _Writer(SYNC_GROUP.flexible(version))
    w.string(group).int32(generation).string(member_id).string(None)
    if version >= 5:
        w.string(PROTOCOL_TYPE).string(PROTOCOL_NAME)
    w.array_length(len(assignments))
    for mid, assignment in assignments:
        w.string(mid)
        w.raw_bytes(assignment).tags()
    w.tags()
    return w.getvalue()


def decode_sync_group(version: int, data: bytes) -> SyncGroupResponse:
    r = Reader(data, SYNC_GROUP.flexible(version))
    throttle, error_code = r.int32(), r.int16()
    if version >= 5:
        r.nullable_string()
        r.nullable_string()
    assignment = r.nullable_bytes() or b""
    r.skip_tags()
    return SyncGroupResponse(throttle, error_code, assignment)


@dataclass(frozen=True, slots=True)
class GroupResponse:
    """Heartbeat and LeaveGroup answers: only the top-level error matters here."""

    throttle_ms: int
    error_code: int


def encode_heartbeat(version: int, group: str, *, generation: int, member_id: str) -> bytes:
    w = Writer(HEARTBEAT.flexible(version))
    w.string(group).int32(generation).string(member_id).string(None).tags()
    return w.getvalue()


def decode_heartbeat(version: int, data: bytes) -> GroupResponse:
    r = Reader(data, HEARTBEAT.flexible(version))
    response = GroupResponse(r.int32(), r.int16())
    r.skip_tags()
    return response


def encode_leave_group(version: int, group: str, *, member_id: str, reason: str) -> bytes:
    w = Writer(LEAVE_GROUP.flexible(version))
    w.string(group).array_length(1).string(member_id).string(None)
    if version >= 5:
        w.string(reason)
    w.tags().tags()
    return w.getvalue()


def decode_leave_group(version: int, data: bytes) -> GroupResponse:
    # The per-member results that follow are not needed: leaving is best effort.
    r = Reader(data, LEAVE_GROUP.flexible(version))
    return GroupResponse(r.int32(), r.int16())


# -- provider ------------------------------------------------------------------------------------


class KafkaGroupProvider:
    """Leadership through membership of the group ``lease_name`` on ``cluster``.

    ``transport_factory`` builds the :class:`Transport` (tests may wrap it).
    """

    kind = "kafka"

    def __init__(
        self,
        cluster: ClusterSettings,
        settings: LeadershipSettings,
        identity: str,
        *,
        performance: PerformanceSettings,
        transport_factory: Callable[..., Any] = Transport,
    ) -> None:
        self._identity = identity
        self._cluster = cluster.name
        self._group = settings.lease_name
        self._session_ms = max(1, round(settings.lease_duration * 1000))
        self._rebalance_ms = self._session_ms
        # One request (heartbeat, sync, leave, lookup) must not outlive the renew deadline.
        self._request_seconds = min(performance.kafka_timeout, settings.renew_deadline)
        # The coordinator holds a JoinGroup until every member rejoined (up to the rebalance
        # timeout); aiokafka's own request timeout must not abort it before that.
        join_budget = settings.lease_duration + self._request_seconds
        self._join_seconds = join_budget
        transport_performance = replace(
            performance, kafka_timeout=max(performance.kafka_timeout, join_budget)
        )
        self._transport: Transport = transport_factory(cluster, transport_performance, None)
        self._connected = False
        self._coordinator: int | None = None
        self._member_id = ""
        self._generation = -1
        self._leading = False
        self._holder: str | None = None

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def holder(self) -> str | None:
        return self._holder

    @property
    def member_id(self) -> str:
        """This instance's member id in the group ("" before the first join)."""
        return self._member_id

    async def acquire_or_renew(self) -> bool:
        try:
            await self._ensure_coordinator()
            if self._generation < 0:
                return await self._join()
            return await self._heartbeat()
        except asyncio.CancelledError:
            # An abandoned JoinGroup/SyncGroup leaves our generation unknown: rejoin next time.
            self._generation = -1
            self._leading = False
            raise
        except KafkaError as exc:
            if isinstance(exc, KafkaConnectionError):
                # Reconnect and look the coordinator up again: it may have moved.
                self._coordinator = None
                await self._disconnect()
            raise LeadershipError(f"cluster {self._cluster}: {exc}") from exc

    async def release(self) -> None:
        member, self._member_id = self._member_id, ""
        self._generation = -1
        self._leading = False
        if not member or self._coordinator is None or not self._connected:
            return
        try:
            version = await self._version(LEAVE_GROUP)
            response = await self._transport.call(
                self._coordinator,
                LEAVE_GROUP,
                version,
                encode_leave_group(version, self._group, member_id=member, reason="shutdown"),
                partial(decode_leave_group, version),
                seconds=self._request_seconds,
            )
        except KafkaError as exc:
            raise LeadershipError(f"LeaveGroup: {exc}") from exc
        if response.error_code not in (0, UNKNOWN_MEMBER_ID):
            raise LeadershipError(f"LeaveGroup: {error_name(response.error_code)}")

    async def close(self) -> None:
        await self._disconnect()

    # -- internals ------------------------------------------------------------------------------

    async def _disconnect(self) -> None:
        self._connected = False
        await self._transport.close()

    async def _version(self, spec: ApiSpec) -> int:
        assert self._coordinator is not None
        version = await self._transport.choose(self._coordinator, spec)
        if version is None:
            raise LeadershipError(
                f"cluster {self._cluster}: the group coordinator does not support "
                f"{spec.name} v{spec.min_version}-v{spec.max_version}"
            )
        return version

    async def _ensure_coordinator(self) -> None:
        if not self._connected:
            await self._transport.connect()
            self._connected = True
        if self._coordinator is not None:
            return
        nodes = self._transport.nodes()
        if not nodes:
            raise LeadershipError(f"cluster {self._cluster}: no broker known")
        node = nodes[0]
        version = await self._transport.choose(node, FIND_COORDINATOR)
        if version is None:
            raise LeadershipError(f"cluster {self._cluster}: FindCoordinator not supported")
        response = await self._transport.call(
            node,
            FIND_COORDINATOR,
            version,
            encode_find_coordinator(version, [self._group]),
            partial(decode_find_coordinator, version, key=self._group),
            seconds=self._request_seconds,
        )
        found = [c for c in response.coordinators if c.key == self._group]
        if not found or found[0].error_code:
            reason = error_name(found[0].error_code) if found else "no answer for the group"
            raise LeadershipError(f"cluster {self._cluster}: FindCoordinator: {reason}")
        self._coordinator = found[0].node_id
        if self._transport.broker_address(self._coordinator) is None:
            self._transport.request_metadata_refresh()

    def _coordinator_moved(self, what: str, code: int) -> LeadershipError:
        self._coordinator = None
        return LeadershipError(f"cluster {self._cluster}: {what}: {error_name(code)}")

    async def _heartbeat(self) -> bool:
        assert self._coordinator is not None
        version = await self._version(HEARTBEAT)
        response = await self._transport.call(
            self._coordinator,
            HEARTBEAT,
            version,
            encode_heartbeat(
                version, self._group, generation=self._generation, member_id=self._member_id
            ),
            partial(decode_heartbeat, version),
            seconds=self._request_seconds,
        )
        code = response.error_code
        if code == 0:
            return self._leading
        if code == REBALANCE_IN_PROGRESS:
            return await self._join()
        if code in (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID):
            # We may have been evicted and replaced: stand down now, rejoin next round.
            if code == UNKNOWN_MEMBER_ID:
                self._member_id = ""
            self._generation = -1
            self._leading = False
            self._holder = None
            log.info("leadership_group_membership_lost", group=self._group, error=error_name(code))
            return False
        if code in COORDINATOR_MOVED:
            raise self._coordinator_moved("Heartbeat", code)
        raise LeadershipError(f"cluster {self._cluster}: Heartbeat: {error_name(code)}")

    async def _join(self) -> bool:
        self._generation = -1
        self._leading = False
        for _ in range(_JOIN_ATTEMPTS):
            joined = await self._join_once()
            if joined is None:
                continue
            assignment = await self._sync(joined)
            if assignment is None:
                continue
            self._generation = joined.generation_id
            self._leading = joined.leader == self._member_id
            self._holder = assignment.decode(errors="replace") or None
            return self._leading
        raise LeadershipError(
            f"cluster {self._cluster}: group {self._group} did not settle after "
            f"{_JOIN_ATTEMPTS} join attempts"
        )

    async def _join_once(self) -> JoinGroupResponse | None:
        """One JoinGroup; None means "join again" (a member id was assigned or reset)."""
        assert self._coordinator is not None
        version = await self._version(JOIN_GROUP)
        response = await self._transport.call(
            self._coordinator,
            JOIN_GROUP,
            version,
            encode_join_group(
                version,
                self._group,
                session_ms=self._session_ms,
                rebalance_ms=self._rebalance_ms,
                member_id=self._member_id,
                metadata=self._identity.encode(),
            ),
            partial(decode_join_group, version),
            seconds=self._join_seconds,
        )
        code = response.error_code
        if code == MEMBER_ID_REQUIRED:
            self._member_id = response.member_id
            return None
        if code == UNKNOWN_MEMBER_ID:
            self._member_id = ""
            return None
        if code in COORDINATOR_MOVED:
            raise self._coordinator_moved("JoinGroup", code)
        if code == INVALID_SESSION_TIMEOUT:
            raise LeadershipError(
                f"cluster {self._cluster}: JoinGroup: INVALID_SESSION_TIMEOUT: lease_duration "
                f"{self._session_ms} ms is outside the broker's group.min.session.timeout.ms / "
                "group.max.session.timeout.ms (6 s to 30 min by default)"
            )
        if code:
            raise LeadershipError(f"cluster {self._cluster}: JoinGroup: {error_name(code)}")
        self._member_id = response.member_id
        return response

    async def _sync(self, joined: JoinGroupResponse) -> bytes | None:
        """SyncGroup for the generation ``joined``; None means "join again"."""
        assert self._coordinator is not None
        leader = joined.leader == self._member_id
        # The leader tells everyone who leads; followers send no assignments.
        assignments = (
            [(mid, self._identity.encode()) for mid, _ in joined.members] if leader else []
        )
        version = await self._version(SYNC_GROUP)
        response = await self._transport.call(
            self._coordinator,
            SYNC_GROUP,
            version,
            encode_sync_group(
                version,
                self._group,
                generation=joined.generation_id,
                member_id=self._member_id,
                assignments=assignments,
            ),
            partial(decode_sync_group, version),
            seconds=self._join_seconds,
        )
        code = response.error_code
        if code in (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION):
            return None
        if code == UNKNOWN_MEMBER_ID:
            self._member_id = ""
            return None
        if code in COORDINATOR_MOVED:
            raise self._coordinator_moved("SyncGroup", code)
        if code:
            raise LeadershipError(f"cluster {self._cluster}: SyncGroup: {error_name(code)}")
        return response.assignment
