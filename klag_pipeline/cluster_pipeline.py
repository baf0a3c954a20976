"""One cluster's running pipeline: ticker → the collection chain → publication.

Owns what happens around the chain for one cluster: the channels (via
:meth:`klag_pipeline.pipeline.chain.Chain.wire`), the cycle deadline, what a failed or a finished
cycle does to ``/health``, the self-metrics and the logs, and the hand-off of each snapshot to
``publish`` (which the leadership gate guards). The exporter builds one per configured cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import structlog

from klag_pipeline.errors import KlagError
from klag_pipeline.events import CycleEvent, CycleStarted
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.leadership import NotLeader
from klag_pipeline.pacing import PauseBoard
from klag_pipeline.pipeline.chain import Chain, WiredChain
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.pipeline.clock import Clock
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.pipeline.ticker import Ticker
from klag_pipeline.settings.schema import ClusterSettings
from klag_pipeline.snapshot import ClusterSnapshot
from klag_pipeline.stages.discovery import BackingOff
from klag_pipeline.stages.early_offsets import EarlyPublication
from klag_pipeline.stages.loop import run_stage
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry.cluster_log import ClusterLog
from klag_pipeline.telemetry.self_metrics import SelfMetrics

log = structlog.get_logger("klag_pipeline")

Publish = Callable[[ClusterSnapshot], Awaitable[None]]


class ClusterPipeline:
    """A cluster's ticker, wired chain and publication loop; :meth:`add_to` starts them."""

    def __init__(
        self,
        settings: ClusterSettings,
        client: ClusterClient,
        chain: Chain[CycleStarted, ClusterSnapshot],
        *,
        poll_interval: float,
        queue_capacity: int,
        clock: Clock,
        status: StatusBoard,
        self_metrics: SelfMetrics,
        early: EarlyPublication | None = None,
        pauses: PauseBoard | None = None,
    ) -> None:
        """``early``: the early publication of the first cycle's offsets, fed by the chain's
        early-offsets stage (docs/pipeline.md, "The first scrape"). ``pauses``: the client's
        broker pauses (:func:`pause_board`), which move the cycle deadline back."""
        self.settings = settings
        self.early = early
        self.client = client
        self.ticker = Ticker(settings.name, poll_interval, clock)
        # The tick channel holds one tick: a busy pipeline makes the ticker skip ticks, never
        # queue a burst of them.
        ticks: Channel[CycleStarted] = Channel(1, f"{settings.name}.ticks")
        self.wired: WiredChain[CycleStarted, ClusterSnapshot] = chain.wire(
            ticks, queue_capacity, settings.name
        )
        self.log = ClusterLog(settings.name, clock.monotonic)
        # Set while this cluster's series are withdrawn from the sinks (stale, or standby).
        self.withdrawn = False
        self._poll_interval = poll_interval
        self._clock = clock
        self._pauses = pauses or pause_board(poll_interval, clock)
        self._status = status
        self._self_metrics = self_metrics
        self._ticks_reported = 0
        for channel in self.wired.channels:
            self_metrics.register_queue(channel.name, channel.qsize)

    @property
    def name(self) -> str:
        return self.settings.name

    def add_to(self, runner: Runner, publish: Publish, on_done: Callable[[], None]) -> None:
        """Register the ticker, every stage and the publication loop with ``runner``;
        ``on_done`` is called once the last snapshot has been published."""
        name = self.name
        runner.add(f"{name}.ticker", lambda: self.ticker.run(self.wired.inbox))
        runner.on_stop(self.ticker.stop)
        for link in self.wired.links:
            runner.add(f"{name}.{link.stage.name}", _stage_task(link, self))
        runner.add(f"{name}.publish", lambda: self._publish_all(publish, on_done))
        if self.early is not None:
            self.early.connect(partial(self._early, publish))

    def deadline(self, event: CycleEvent | ClusterSnapshot) -> float:
        """When the event's cycle must be done: ``poll_interval`` after it started, plus the
        time brokers paused the exporter since (klag_pipeline.pacing).

        The event loop's clock is time.monotonic, the same clock CycleStarted records. A tick
        may have waited in the tick channel; its cycle starts when discovery takes it (and
        discovery re-stamps it), so the first stage's deadline counts from now."""
        if isinstance(event, CycleStarted | ClusterSnapshot):
            # A finished cycle's snapshot (the evaluation's input) has had its cycle; the
            # evaluation, bounded CPU work, gets a poll interval of its own.
            return self._clock.monotonic() + self._poll_interval
        return self._paced_deadline(event.start.started_monotonic)

    def _paced_deadline(self, since: float) -> float:
        return since + self._poll_interval + self._pauses.extension(since)

    @contextmanager
    def watch(self, event: CycleEvent | ClusterSnapshot, scope: asyncio.Timeout) -> Iterator[None]:
        """While a stage of ``event``'s cycle runs, each broker pause moves its deadline back."""
        if isinstance(event, ClusterSnapshot):
            yield  # the evaluation sends no requests; its budget is its own
            return
        # A tick's cycle starts when discovery takes it (see deadline()).
        started = event.start.started_monotonic
        since = self._clock.monotonic() if isinstance(event, CycleStarted) else started

        def move() -> None:
            if not scope.expired():
                scope.reschedule(self._paced_deadline(since))

        with self._pauses.watching(move):
            yield

    def failed(self, cluster: str, cycle: int, stage: str, error: KlagError) -> None:
        if isinstance(error, NotLeader):
            return
        self._report_skipped_ticks()
        self._status.cycle_failed(cluster, f"{stage}: {error}")
        self._self_metrics.stage_failed(cluster, stage)
        self._self_metrics.cycle_finished(cluster, "error")
        # A back-off restates the failure that started it: the last error stays that cause.
        restated = isinstance(error, BackingOff) and self.log.failing
        self.log.cycle_failed(cycle, stage, error, restated=restated)

    def _report_skipped_ticks(self) -> None:
        skipped = self.ticker.skipped
        self._self_metrics.ticks_skipped(self.name, skipped - self._ticks_reported)
        self._ticks_reported = skipped

    async def _publish_all(self, publish: Publish, on_done: Callable[[], None]) -> None:
        """Record each cycle's success and hand its snapshot to ``publish``."""
        name = self.name
        try:
            async for snapshot in self.wired.outbox:
                self._report_skipped_ticks()
                self._status.cycle_succeeded(name, snapshot.duration_seconds)
                self._self_metrics.cycle_finished(name, "ok")
                self._self_metrics.partial_failures(name, "cycle", snapshot.error_count)
                self._self_metrics.carried(name, snapshot.carried_rows, snapshot.carried_groups)
                self._self_metrics.time_lag_denied(name, len(snapshot.time_lag_denied))
                self.log.cycle_succeeded(snapshot)
                if self.withdrawn:
                    log.info("cluster_fresh_again", cluster=name, cycle=snapshot.cycle)
                    self.withdrawn = False
                log.debug(
                    "cycle_completed",
                    cluster=name,
                    cycle=snapshot.cycle,
                    duration_seconds=round(snapshot.duration_seconds, 3),
                    groups=len(snapshot.groups),
                    rows=len(snapshot.rows),
                    errors=snapshot.error_count,
                    carried_rows=snapshot.carried_rows,
                )
                if self.early is None:
                    await publish(snapshot)
                else:
                    await self.early.publish_complete(snapshot, publish)
        finally:
            on_done()

    async def _early(self, publish: Publish, snapshot: ClusterSnapshot) -> None:
        """Publish the partial snapshot of a first cycle; it makes the cluster's data fresh
        (``/ready``), but it is not a cycle (no success, duration or cycle log)."""
        await publish(snapshot)
        self._status.offsets_published(self.name)
        if self.withdrawn:
            log.info("cluster_fresh_again", cluster=self.name, cycle=snapshot.cycle)
            self.withdrawn = False
        log.debug(
            "offsets_published_early",
            cluster=self.name,
            cycle=snapshot.cycle,
            groups=len(snapshot.groups),
            rows=len(snapshot.rows),
        )


def _stage_task(link: Any, pipeline: ClusterPipeline) -> Callable[[], Awaitable[None]]:
    # ``link`` is a Link[Any, Any]: the chain's types were checked when it was built (then()).
    def task() -> Awaitable[None]:
        return run_stage(
            link.stage,
            link.inbox,
            link.outbox,
            deadline_of=pipeline.deadline,
            on_failure=pipeline.failed,
            watch=pipeline.watch,
        )

    return task


def pause_board(poll_interval: float, clock: Clock) -> PauseBoard:
    """A cluster's broker pauses: they move a cycle's deadline back by up to two more poll
    intervals (a cycle in flight started at most three poll intervals ago)."""
    return PauseBoard(2 * poll_interval, clock.monotonic, horizon=3 * poll_interval)
