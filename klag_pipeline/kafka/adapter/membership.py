"""The :class:`~klag_pipeline.kafka.membership.GroupMembership` port over :class:`Transport`.

Holds the connection and the group's coordinator, sends the codecs of
:mod:`klag_pipeline.kafka.protocol.membership`, and sorts each answer's error code into a typed
result or a :class:`MembershipError` (aiokafka is a byte mover here, as on the collection path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from klag_pipeline.errors import KafkaConnectionError, KafkaError
from klag_pipeline.kafka import membership as port
from klag_pipeline.kafka.adapter.transport import Decoded, Transport
from klag_pipeline.kafka.errors import (
    COORDINATOR_MOVED,
    ILLEGAL_GENERATION,
    INVALID_SESSION_TIMEOUT,
    MEMBER_ID_REQUIRED,
    REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID,
    error_name,
)
from klag_pipeline.kafka.membership import MembershipError
from klag_pipeline.kafka.protocol import (
    FIND_COORDINATOR,
    ApiSpec,
    decode_find_coordinator,
    encode_find_coordinator,
)
from klag_pipeline.kafka.protocol.membership import (
    LEADER_PROTOCOL,
    GroupProtocol,
    decode_heartbeat,
    decode_join_group,
    decode_leave_group,
    decode_sync_group,
    encode_heartbeat,
    encode_join_group,
    encode_leave_group,
    encode_sync_group,
)
from klag_pipeline.kafka.protocol.versions import HEARTBEAT, JOIN_GROUP, LEAVE_GROUP, SYNC_GROUP
from klag_pipeline.settings.schema import ClusterSettings, PerformanceSettings

R = TypeVar("R", bound=Decoded)


class KafkaGroupMembership:
    """Membership of ``group`` on ``cluster``. ``transport_factory`` builds the
    :class:`Transport` (tests may pass a subclass)."""

    def __init__(
        self,
        cluster: ClusterSettings,
        group: str,
        timing: port.MembershipTiming,
        performance: PerformanceSettings,
        protocol: GroupProtocol = LEADER_PROTOCOL,
        *,
        transport_factory: Callable[..., Any] = Transport,
    ) -> None:
        self._cluster = cluster.name
        self._group = group
        self._protocol = protocol
        self._timing = timing
        # The coordinator holds a JoinGroup until every member rejoined (up to the rebalance
        # timeout); aiokafka's own request timeout must not abort it before that.
        transport_performance = replace(
            performance, kafka_timeout=max(performance.kafka_timeout, timing.join_seconds)
        )
        self._transport: Transport = transport_factory(cluster, transport_performance, None)
        self._connected = False
        self._coordinator: int | None = None

    async def join(self, member_id: str, metadata: bytes) -> port.Joined | port.JoinAgain:
        response = await self._call(
            JOIN_GROUP,
            lambda version: encode_join_group(
                version,
                self._group,
                session_ms=self._timing.session_ms,
                rebalance_ms=self._timing.rebalance_ms,
                member_id=member_id,
                metadata=metadata,
                protocol=self._protocol,
            ),
            decode_join_group,
            self._timing.join_seconds,
        )
        code = response.error_code
        if code == MEMBER_ID_REQUIRED:
            return port.JoinAgain(response.member_id)
        if code == UNKNOWN_MEMBER_ID:
            return port.JoinAgain("")
        if code == INVALID_SESSION_TIMEOUT:
            raise port.SessionTimeoutRejected(
                f"cluster {self._cluster}: JoinGroup: {error_name(code)}"
            )
        if code:
            raise self._refused("JoinGroup", code)
        return port.Joined(
            response.generation_id, response.leader, response.member_id, response.members
        )

    async def sync(
        self, generation: int, member_id: str, assignments: Sequence[tuple[str, bytes]]
    ) -> port.Synced | port.JoinAgain:
        response = await self._call(
            SYNC_GROUP,
            lambda version: encode_sync_group(
                version,
                self._group,
                generation=generation,
                member_id=member_id,
                assignments=assignments,
                protocol=self._protocol,
            ),
            decode_sync_group,
            self._timing.join_seconds,
        )
        code = response.error_code
        if code in (REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION):
            return port.JoinAgain(member_id)
        if code == UNKNOWN_MEMBER_ID:
            return port.JoinAgain("")
        if code:
            raise self._refused("SyncGroup", code)
        return port.Synced(response.assignment)

    async def heartbeat(self, generation: int, member_id: str) -> port.Beat | port.Evicted:
        response = await self._call(
            HEARTBEAT,
            lambda version: encode_heartbeat(
                version, self._group, generation=generation, member_id=member_id
            ),
            decode_heartbeat,
            self._timing.request_seconds,
        )
        code = response.error_code
        if code == 0:
            return port.Beat.MEMBER
        if code == REBALANCE_IN_PROGRESS:
            return port.Beat.REBALANCING
        if code == ILLEGAL_GENERATION:
            return port.Evicted(member_id, error_name(code))
        if code == UNKNOWN_MEMBER_ID:
            return port.Evicted("", error_name(code))
        raise self._refused("Heartbeat", code)

    async def leave(self, member_id: str) -> None:
        node = self._coordinator
        if node is None or not self._connected:
            return
        try:
            version = await self._version(node, LEAVE_GROUP)
            response = await self._transport.call(
                node,
                LEAVE_GROUP,
                version,
                encode_leave_group(version, self._group, member_id=member_id, reason="shutdown"),
                partial(decode_leave_group, version),
                seconds=self._timing.request_seconds,
            )
        except MembershipError:
            raise
        except KafkaError as exc:
            raise MembershipError(f"LeaveGroup: {exc}") from exc
        if response.error_code not in (0, UNKNOWN_MEMBER_ID):
            raise MembershipError(f"LeaveGroup: {error_name(response.error_code)}")

    async def close(self) -> None:
        await self._disconnect()

    # -- internals ------------------------------------------------------------------------------

    async def _call(
        self,
        spec: ApiSpec,
        encode: Callable[[int], bytes],
        decode: Callable[[int, bytes], R],
        seconds: float,
    ) -> R:
        """One request to the coordinator (connecting and looking it up first if needed)."""
        try:
            node = await self._coordinator_node()
            version = await self._version(node, spec)
            return await self._transport.call(
                node, spec, version, encode(version), partial(decode, version), seconds=seconds
            )
        except MembershipError:
            raise
        except KafkaError as exc:
            if isinstance(exc, KafkaConnectionError):
                # Reconnect and look the coordinator up again: it may have moved.
                self._coordinator = None
                await self._disconnect()
            raise MembershipError(f"cluster {self._cluster}: {exc}") from exc

    async def _version(self, node: int, spec: ApiSpec, unsupported: str | None = None) -> int:
        reason = unsupported or (
            f"the group coordinator does not support "
            f"{spec.name} v{spec.min_version}-v{spec.max_version}"
        )
        return await self._transport.require(
            node, spec, lambda: MembershipError(f"cluster {self._cluster}: {reason}")
        )

    async def _coordinator_node(self) -> int:
        if not self._connected:
            await self._transport.connect()
            self._connected = True
        if self._coordinator is not None:
            return self._coordinator
        nodes = self._transport.nodes()
        if not nodes:
            raise MembershipError(f"cluster {self._cluster}: no broker known")
        node = nodes[0]
        version = await self._version(node, FIND_COORDINATOR, "FindCoordinator not supported")
        response = await self._transport.call(
            node,
            FIND_COORDINATOR,
            version,
            encode_find_coordinator(version, [self._group]),
            partial(decode_find_coordinator, version, key=self._group),
            seconds=self._timing.request_seconds,
        )
        found = [c for c in response.coordinators if c.key == self._group]
        if not found or found[0].error_code:
            reason = error_name(found[0].error_code) if found else "no answer for the group"
            raise MembershipError(f"cluster {self._cluster}: FindCoordinator: {reason}")
        self._coordinator = found[0].node_id
        if self._transport.broker_address(self._coordinator) is None:
            self._transport.request_metadata_refresh()
        return self._coordinator

    def _refused(self, what: str, code: int) -> MembershipError:
        if code in COORDINATOR_MOVED:
            self._coordinator = None
        return MembershipError(f"cluster {self._cluster}: {what}: {error_name(code)}")

    async def _disconnect(self) -> None:
        self._connected = False
        await self._transport.close()
