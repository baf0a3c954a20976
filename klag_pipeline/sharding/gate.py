"""What the exporter does with the sharding group's assignment (docs/scaling.md).

The gate owns the replica's :class:`ShardMember` and answers three questions for the
pipelines: may a cycle run (only once this replica is assigned; until then its ticks stop before
any Kafka traffic, as a standby's do), what does a cycle collect (``current``, read by the
collection chain's sharding stages), and what reaches the sinks (``publish`` narrows every
snapshot to the ownership current at publication).

When the assignment changes, under the same lock as publication: a cluster that lost buckets is
republished at once without them (its last snapshot, narrowed), so their series leave this
replica's ``/metrics`` before their new owner's first cycle ends; a cluster that gained buckets
starts a cycle now rather than at its next tick. Losing everything (shutdown, or the
coordinating cluster silent for ``session_timeout``) withdraws every cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from klag_pipeline.cluster_pipeline import ClusterPipeline
from klag_pipeline.events import CycleStarted
from klag_pipeline.kafka.factory import MembershipFactory, default_membership_factory
from klag_pipeline.kafka.membership import MembershipTiming
from klag_pipeline.kafka.protocol.membership import SHARD_PROTOCOL
from klag_pipeline.leadership import StandbyGate, resolve_identity
from klag_pipeline.pipeline.chain import Chain
from klag_pipeline.pipeline.channel import Channel, ChannelClosed
from klag_pipeline.pipeline.clock import Clock
from klag_pipeline.settings.schema import Settings
from klag_pipeline.sharding.assignment import Layout
from klag_pipeline.sharding.member import ShardMember
from klag_pipeline.sharding.ownership import NOTHING, Ownership, restrict
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry.self_metrics import SelfMetrics


class ShardGate:
    def __init__(
        self,
        settings: Settings,
        status: StatusBoard,
        self_metrics: SelfMetrics,
        clock: Clock,
        membership_factory: MembershipFactory = default_membership_factory,
    ) -> None:
        sharding = settings.exporter.sharding
        performance = settings.exporter.performance
        name = sharding.cluster or settings.clusters[0].name
        cluster = next(c for c in settings.clusters if c.name == name)
        session_ms = max(1, round(sharding.session_timeout * 1000))
        # A heartbeat must not hang past the point where the session could still be saved.
        request_seconds = min(performance.kafka_timeout, sharding.session_timeout / 3)
        timing = MembershipTiming(
            session_ms=session_ms,
            rebalance_ms=session_ms,
            request_seconds=request_seconds,
            join_seconds=sharding.session_timeout + request_seconds,
        )
        self.member = ShardMember(
            membership_factory(cluster, sharding.group_id, timing, performance, SHARD_PROTOCOL),
            identity=resolve_identity(sharding),
            group=sharding.group_id,
            layout=Layout(tuple(c.name for c in settings.clusters), sharding.buckets),
            session_timeout=sharding.session_timeout,
            heartbeat_interval=sharding.heartbeat_interval,
            clock=clock,
            on_change=self._changed,
        )
        status.identity = self.member.identity
        status.readiness = self._readiness
        status.sharding = self.view
        self._group = sharding.group_id
        self._metrics = self_metrics.sharding()
        self._lock = asyncio.Lock()
        self._pipelines: Sequence[ClusterPipeline] = ()
        self._snapshots: Channel[SinkUpdate] | None = None
        self._published: dict[str, ClusterSnapshot] = {}
        self._before: Ownership = NOTHING  # what _changed last acted on

    def current(self) -> Ownership:
        return self.member.ownership

    def gate(
        self, chain: Chain[CycleStarted, ClusterSnapshot], on_skipped: Callable[[], None]
    ) -> Chain[CycleStarted, ClusterSnapshot]:
        """``chain`` whose cycles stop before any Kafka traffic until this replica is assigned."""
        return chain.replace_first(lambda stage: StandbyGate(stage, self._assigned, on_skipped))

    def attach(self, pipelines: Sequence[ClusterPipeline], snapshots: Channel[SinkUpdate]) -> None:
        self._pipelines = pipelines
        self._snapshots = snapshots

    async def run(self, stop: asyncio.Event) -> None:
        await self.member.run(stop)

    async def publish(self, snapshot: ClusterSnapshot) -> None:
        assert self._snapshots is not None, "attach() before the pipelines run"
        async with self._lock:
            ownership = self.member.ownership
            if ownership is NOTHING:
                return  # assigned nothing, or lost it while this cycle ran
            # A walk over every row and health entry: off the event loop, like the calculation.
            narrowed = await asyncio.to_thread(restrict, snapshot, ownership)
            self._published[snapshot.cluster] = narrowed
            self._metrics.exported(snapshot.cluster, len(narrowed.groups), len(narrowed.rows))
            await self._snapshots.send(narrowed)

    def view(self) -> dict[str, object]:
        """What ``/leader`` shows in sharded mode."""
        ownership = self.member.ownership
        return {
            "group_id": self._group,
            "generation": ownership.generation,
            "members": ownership.members,
            "buckets_per_cluster": ownership.buckets if ownership is not NOTHING else None,
            "owned": {cluster: sorted(b) for cluster, b in sorted(ownership.units.items())},
            "problem": self.member.problem,
        }

    # -- internals ------------------------------------------------------------------------------

    def _assigned(self) -> bool:
        return self.member.ownership is not NOTHING

    def _readiness(self) -> tuple[bool, str] | None:
        problem = self.member.problem
        return None if problem is None else (False, f"sharding: {problem}")

    async def _changed(self, ownership: Ownership) -> None:
        async with self._lock:
            self._metrics.owned(
                {p.name: len(ownership.owned(p.name)) for p in self._pipelines},
                ownership.members,
                new_assignment=ownership is not NOTHING,
            )
            for pipeline in self._pipelines:
                name = pipeline.name
                before, after = self._before.owned(name), ownership.owned(name)
                if before - after and name in self._published:
                    await self._narrow(name, ownership)
                if after - before:
                    pipeline.ticker.kick()
            self._before = ownership

    async def _narrow(self, cluster: str, ownership: Ownership) -> None:
        assert self._snapshots is not None, "attach() before the member runs"
        update: SinkUpdate
        if ownership.owned(cluster):
            update = await asyncio.to_thread(restrict, self._published[cluster], ownership)
            self._published[cluster] = update
            self._metrics.exported(cluster, len(update.groups), len(update.rows))
        else:
            update = ClusterWithdrawn(cluster, "sharding: no bucket of this cluster is owned")
            del self._published[cluster]
            self._metrics.exported(cluster, 0, 0)
        try:
            await self._snapshots.send(update)
        except ChannelClosed:
            return  # shutting down: the sinks are finishing anyway
