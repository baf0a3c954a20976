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

This module keeps the election state (member id, generation, who leads) and the timing; the
requests go through the :class:`~klag_pipeline.kafka.membership.GroupMembership` port, whose
adapter (:mod:`klag_pipeline.kafka.adapter.membership`) finds the coordinator and sends them over
the same Transport the collection path uses.
"""

from __future__ import annotations

import asyncio

import structlog

# The factory is the seam's default (as for the collection path's client); it loads the adapter
# only when called, so this module depends on the port alone.
from klag_pipeline.kafka.factory import MembershipFactory, default_membership_factory
from klag_pipeline.kafka.membership import (
    JOIN_ATTEMPTS,
    Beat,
    JoinAgain,
    MembershipError,
    MembershipTiming,
    SessionTimeoutRejected,
    join_and_sync,
)
from klag_pipeline.kafka.protocol.membership import LEADER_PROTOCOL
from klag_pipeline.leadership.provider import LeadershipError, ProviderState
from klag_pipeline.settings.schema import ClusterSettings, LeadershipSettings, PerformanceSettings

log = structlog.get_logger("klag_pipeline.leadership")


class KafkaGroupProvider(ProviderState):
    """Leadership through membership of the group ``lease_name`` on ``cluster``.

    ``membership_factory`` builds the :class:`GroupMembership` (tests may wrap it).
    """

    kind = "kafka"

    def __init__(
        self,
        cluster: ClusterSettings,
        settings: LeadershipSettings,
        identity: str,
        *,
        performance: PerformanceSettings,
        membership_factory: MembershipFactory = default_membership_factory,
    ) -> None:
        super().__init__(identity)
        self._cluster = cluster.name
        self._group = settings.lease_name
        self._session_ms = max(1, round(settings.lease_duration * 1000))
        # One request (heartbeat, leave, lookup) must not outlive the renew deadline.
        request_seconds = min(performance.kafka_timeout, settings.renew_deadline)
        timing = MembershipTiming(
            session_ms=self._session_ms,
            rebalance_ms=self._session_ms,
            request_seconds=request_seconds,
            # The coordinator holds a JoinGroup (and SyncGroup) until every member rejoined, up
            # to the rebalance timeout.
            join_seconds=settings.lease_duration + request_seconds,
        )
        self._membership = membership_factory(
            cluster, self._group, timing, performance, LEADER_PROTOCOL
        )
        self._member_id = ""
        self._generation = -1

    @property
    def member_id(self) -> str:
        """This instance's member id in the group ("" before the first join)."""
        return self._member_id

    async def acquire_or_renew(self) -> bool:
        try:
            if self._generation < 0:
                return await self._join()
            return await self._heartbeat()
        except asyncio.CancelledError:
            # An abandoned JoinGroup/SyncGroup leaves our generation unknown: rejoin next time.
            self._generation = -1
            self._leading = False
            raise
        except SessionTimeoutRejected as exc:
            raise LeadershipError(
                f"{exc}: lease_duration {self._session_ms} ms is outside the broker's "
                "group.min.session.timeout.ms / group.max.session.timeout.ms "
                "(6 s to 30 min by default)"
            ) from exc
        except MembershipError as exc:
            raise LeadershipError(str(exc)) from exc

    async def release(self) -> None:
        member, self._member_id = self._member_id, ""
        self._generation = -1
        self._leading = False
        if not member:
            return
        try:
            await self._membership.leave(member)
        except MembershipError as exc:
            raise LeadershipError(str(exc)) from exc

    async def close(self) -> None:
        await self._membership.close()

    # -- internals ------------------------------------------------------------------------------

    async def _heartbeat(self) -> bool:
        beat = await self._membership.heartbeat(self._generation, self._member_id)
        if beat is Beat.MEMBER:
            return self._leading
        if beat is Beat.REBALANCING:
            return await self._join()
        # We may have been evicted and replaced: stand down now, rejoin next round.
        self._member_id = beat.member_id
        self._generation = -1
        self._leading = False
        self._holder = None
        log.info("leadership_group_membership_lost", group=self._group, error=beat.reason)
        return False

    async def _join(self) -> bool:
        self._generation = -1
        self._leading = False
        identity = self._identity.encode()
        # The leader tells everyone who leads.
        settled = await join_and_sync(
            self._membership,
            self._member_id,
            identity,
            lambda joined: [(mid, identity) for mid, _ in joined.members],
        )
        self._member_id = settled.member_id
        if isinstance(settled, JoinAgain):
            raise LeadershipError(
                f"cluster {self._cluster}: group {self._group} did not settle after "
                f"{JOIN_ATTEMPTS} join attempts"
            )
        self._generation = settled.joined.generation
        self._leading = settled.leading
        self._holder = settled.assignment.decode(errors="replace") or None
        return self._leading
