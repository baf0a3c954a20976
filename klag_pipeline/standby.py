"""The leadership gate: with ``[exporter.leadership]`` on, collect and publish only while leading.

Active-passive HA (SPEC §8, docs/high-availability.md). The instance starts as a standby: each
pipeline's first stage is wrapped in a :class:`klag_pipeline.leadership.StandbyGate`, so a
standby's ticks stop before any Kafka traffic yet still prove the loop alive to ``/health``.
Elected, it kicks every ticker (the standby's data is a lease old already); demoted, it withdraws
every cluster's series from the sinks. Publication and withdrawal hold one lock, so a snapshot
that passed the leader check can never land after the withdrawals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from klag_pipeline.cluster_pipeline import ClusterPipeline
from klag_pipeline.events import CycleStarted
from klag_pipeline.leadership import (
    LeaderElector,
    LeadershipProvider,
    StandbyGate,
    build_provider,
    resolve_identity,
)
from klag_pipeline.pipeline.chain import Chain
from klag_pipeline.pipeline.channel import Channel, ChannelClosed
from klag_pipeline.pipeline.clock import Clock
from klag_pipeline.settings.schema import Settings
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry.self_metrics import SelfMetrics


class LeadershipGate:
    """Decides whether cycles run and snapshots reach the sinks. Without leadership enabled
    every instance leads and the gate lets everything through."""

    def __init__(
        self,
        settings: Settings,
        status: StatusBoard,
        self_metrics: SelfMetrics,
        clock: Clock,
        provider: LeadershipProvider | None = None,
    ) -> None:
        """``provider`` replaces the one ``[exporter.leadership]`` would build (tests)."""
        self._status = status
        self._lock = asyncio.Lock()
        self._pipelines: Sequence[ClusterPipeline] = ()
        self._snapshots: Channel[SinkUpdate] | None = None
        self.elector: LeaderElector | None = None
        leadership = settings.exporter.leadership
        if not leadership.enabled:
            return
        if provider is None:
            provider = build_provider(settings, resolve_identity(leadership))
        status.identity = provider.identity
        status.set_leader(False)
        self.elector = LeaderElector(
            provider,
            leadership,
            clock=clock,
            on_elected=self._elected,
            on_demoted=self._demoted,
            metrics=self_metrics.leadership(provider.kind),
        )

    def gate(
        self, chain: Chain[CycleStarted, ClusterSnapshot], on_skipped: Callable[[], None]
    ) -> Chain[CycleStarted, ClusterSnapshot]:
        """``chain`` with its first stage behind the standby gate (unchanged without leadership)."""
        if self.elector is None:
            return chain
        is_leader = self._is_leader
        return chain.replace_first(lambda stage: StandbyGate(stage, is_leader, on_skipped))

    def attach(self, pipelines: Sequence[ClusterPipeline], snapshots: Channel[SinkUpdate]) -> None:
        """The pipelines to kick and withdraw, and where withdrawals go."""
        self._pipelines = pipelines
        self._snapshots = snapshots

    def _is_leader(self) -> bool:
        return self._status.is_leader

    async def publish(self, snapshot: ClusterSnapshot) -> None:
        """Hand ``snapshot`` to the sinks if this instance leads (always, without leadership)."""
        assert self._snapshots is not None, "attach() before the pipelines run"
        async with self._lock:
            if self._status.is_leader:
                await self._snapshots.send(snapshot)

    async def _elected(self) -> None:
        self._status.set_leader(True)
        # Collect now rather than at the next tick: the standby's data is a lease old already.
        for pipeline in self._pipelines:
            pipeline.ticker.kick()

    async def _demoted(self) -> None:
        self._status.set_leader(False)
        assert self._snapshots is not None, "attach() before the elector runs"
        async with self._lock:
            for pipeline in self._pipelines:
                pipeline.withdrawn = True
                try:
                    await self._snapshots.send(ClusterWithdrawn(pipeline.name, "standby"))
                except ChannelClosed:
                    return  # shutting down: the sinks are finishing anyway
