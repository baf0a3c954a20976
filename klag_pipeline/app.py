"""Composition root of the long-running exporter: settings → clients → stages → sinks → runner.

``run`` / :func:`serve` is the exporter. The one-shot commands (``once``, ``check --connect``)
live in :mod:`klag_pipeline.commands`. Nothing else wires the exporter's components together.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from klag_pipeline import __version__
from klag_pipeline.errors import ConfigError, KlagError
from klag_pipeline.events import (
    CycleStarted,
    GroupsDiscovered,
    OffsetsFetched,
    TimestampsSampled,
    WatermarksListed,
)
from klag_pipeline.kafka.factory import ClientFactory, default_client_factory
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.leadership import (
    LeaderElector,
    LeadershipProvider,
    NotLeader,
    StandbyGate,
    build_provider,
    resolve_identity,
)
from klag_pipeline.pipeline.channel import Channel, ChannelClosed, DroppingChannel
from klag_pipeline.pipeline.clock import Clock, SystemClock
from klag_pipeline.pipeline.fanout import FanOut
from klag_pipeline.pipeline.runner import Runner, install_signal_handlers
from klag_pipeline.pipeline.ticker import Ticker
from klag_pipeline.settings.redaction import redact_settings
from klag_pipeline.settings.schema import ClusterSettings, Settings
from klag_pipeline.sinks import Sink
from klag_pipeline.sinks.prometheus import PrometheusSink
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate
from klag_pipeline.stages.calculation import CalculationStage
from klag_pipeline.stages.committed_offsets import CommittedOffsetsStage
from klag_pipeline.stages.discovery import BackingOff, DiscoveryStage
from klag_pipeline.stages.loop import run_stage
from klag_pipeline.stages.timestamps import TimestampStage
from klag_pipeline.stages.watermarks import WatermarksStage
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry import runtime
from klag_pipeline.telemetry.cluster_log import ClusterLog, log_summaries
from klag_pipeline.telemetry.self_metrics import SelfMetrics

log = structlog.get_logger("klag_pipeline")

# Shutdown: time allowed for in-flight cycles to finish and sinks to flush after SIGTERM.
SHUTDOWN_TIMEOUT_SECONDS = 10.0


def cycle_start(event: object) -> CycleStarted:
    """The CycleStarted at the root of any stage event."""
    while not isinstance(event, CycleStarted):
        if isinstance(event, GroupsDiscovered):
            event = event.start
        elif isinstance(event, OffsetsFetched):
            event = event.discovered
        elif isinstance(event, WatermarksListed):
            event = event.offsets
        elif isinstance(event, TimestampsSampled):
            event = event.watermarks
        else:
            raise TypeError(f"not a cycle event: {type(event).__name__}")
    return event


@dataclass
class ClusterPipeline:
    """One cluster's chain: ticker → discovery → offsets → watermarks → timestamps → calculation."""

    settings: ClusterSettings
    client: ClusterClient
    ticker: Ticker
    stages: tuple[Any, ...]
    channels: tuple[Channel[Any], ...]
    log: ClusterLog
    withdrawn: bool = False
    ticks_reported: int = 0


class Exporter:
    """The long-lived exporter. Build it, then ``await exporter.run(stop_event)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        client_factory: ClientFactory = default_client_factory,
        extra_sinks: Sequence[Sink] = (),
        leadership_provider: LeadershipProvider | None = None,
    ) -> None:
        """``leadership_provider`` replaces the one ``[exporter.leadership]`` would build (tests);
        it is used only when leadership is enabled."""
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        exporter = settings.exporter
        self.status = StatusBoard(
            [c.name for c in settings.clusters],
            staleness_threshold=exporter.staleness_threshold,
            poll_interval=exporter.poll_interval,
            clock=self.clock,
        )
        self.self_metrics = SelfMetrics()
        self.elector = self._build_elector(leadership_provider)
        # Held while a snapshot is handed to the sinks and while a demotion withdraws: a snapshot
        # that passed the leader check can never land after the withdrawals.
        self._leadership_lock = asyncio.Lock()
        self.prometheus = PrometheusSink(
            exporter.granularity,
            self.status,
            self.self_metrics,
            cluster_labels=self._cluster_labels(),
        )
        self.sinks: list[Sink] = [self.prometheus, *self._configured_sinks(), *extra_sinks]
        self.snapshots: Channel[SinkUpdate] = Channel(
            exporter.performance.queue_capacity, "snapshots"
        )
        self.inboxes = {
            sink.name: DroppingChannel[SinkUpdate](
                exporter.performance.queue_capacity,
                f"sink.{sink.name}",
                on_drop=self._dropper(sink.name),
            )
            for sink in self.sinks
        }
        self.pipelines = [
            self._build_pipeline(cluster, client_factory) for cluster in settings.clusters
        ]
        self._publishers_left = len(self.pipelines)
        self.self_metrics.register_queue("snapshots", self.snapshots.qsize)
        for name, inbox in self.inboxes.items():
            self.self_metrics.register_queue(f"sink.{name}", inbox.qsize)

    def _cluster_labels(self) -> dict[str, Mapping[str, str]]:
        return {cluster.name: cluster.labels for cluster in self.settings.clusters}

    def _configured_sinks(self) -> list[Sink]:
        """The optional sinks the settings enable (SPEC §6). The OTLP sink is imported only when
        enabled: the OpenTelemetry SDK is a heavy import nobody else needs."""
        exporter = self.settings.exporter
        sinks: list[Sink] = []
        if exporter.otel.enabled:
            from klag_pipeline.sinks.otlp import OtlpSink

            sinks.append(
                OtlpSink(
                    exporter.otel,
                    granularity=exporter.granularity,
                    version=__version__,
                    instance_id=exporter.leadership.identity or socket.gethostname(),
                    on_error=self.self_metrics.sink_error,
                    up=self.status.fresh_by_cluster,
                    cluster_labels=self._cluster_labels(),
                )
            )
        if exporter.jsonl.enabled:
            from klag_pipeline.sinks.jsonl import JsonlSink

            sinks.append(JsonlSink(exporter.jsonl, on_error=self.self_metrics.sink_error))
        return sinks

    def _build_elector(self, provider: LeadershipProvider | None) -> LeaderElector | None:
        """Active-passive HA (SPEC §8): start as a standby and collect only while leading."""
        leadership = self.settings.exporter.leadership
        if not leadership.enabled:
            return None
        if provider is None:
            provider = build_provider(self.settings, resolve_identity(leadership))
        self.status.identity = provider.identity
        self.status.set_leader(False)
        return LeaderElector(
            provider,
            leadership,
            clock=self.clock,
            on_elected=self._elected,
            on_demoted=self._demoted,
            metrics=self.self_metrics.leadership(provider.kind),
        )

    async def _elected(self) -> None:
        self.status.set_leader(True)
        # Collect now rather than at the next tick: the standby's data is a lease old already.
        for pipeline in self.pipelines:
            pipeline.ticker.kick()

    async def _demoted(self) -> None:
        self.status.set_leader(False)
        async with self._leadership_lock:
            for pipeline in self.pipelines:
                pipeline.withdrawn = True
                try:
                    await self.snapshots.send(ClusterWithdrawn(pipeline.settings.name, "standby"))
                except ChannelClosed:
                    return  # shutting down: the sinks are finishing anyway

    def _dropper(self, sink: str) -> Callable[[SinkUpdate], None]:
        def dropped(_: SinkUpdate) -> None:
            self.self_metrics.snapshot_dropped(sink)

        return dropped

    def _build_pipeline(
        self, cluster: ClusterSettings, client_factory: ClientFactory
    ) -> ClusterPipeline:
        exporter = self.settings.exporter
        capacity = exporter.performance.queue_capacity
        client = client_factory(cluster, exporter, self.self_metrics.for_cluster(cluster.name))
        clock = self.clock
        stages: tuple[Any, ...] = (
            DiscoveryStage(
                client,
                cluster,
                time_fn=clock.time,
                monotonic=clock.monotonic,
                on_cycle_start=partial(self.status.cycle_attempted, cluster.name),
                recheck_for=exporter.staleness_threshold,
            ),
            CommittedOffsetsStage(client, cluster, time_fn=clock.time, monotonic=clock.monotonic),
            WatermarksStage(client, time_fn=clock.time, monotonic=clock.monotonic),
            TimestampStage(
                client,
                exporter.timestamp_sampling,
                cache_lookup=self.self_metrics.cache_lookup,
                clock=clock,
            ),
            CalculationStage(
                cluster,
                time_fn=clock.time,
                monotonic=clock.monotonic,
                carry_for=exporter.staleness_threshold,
            ),
        )
        if self.elector is not None:
            # A standby's ticks stop at the gate (no Kafka traffic), yet still prove the loop
            # alive to /health; the election kicks the ticker so collection starts at once.
            gate = StandbyGate(
                stages[0],
                lambda: self.status.is_leader,
                partial(self.status.cycle_attempted, cluster.name),
            )
            stages = (gate, *stages[1:])
        # The tick channel holds one tick: a busy pipeline makes the ticker skip ticks, never
        # queue a burst of them.
        channels: list[Channel[Any]] = [Channel(1, f"{cluster.name}.ticks")]
        for stage in stages:
            channels.append(Channel(capacity, f"{cluster.name}.{stage.name}"))
        for channel in channels:
            self.self_metrics.register_queue(channel.name, channel.qsize)
        return ClusterPipeline(
            settings=cluster,
            client=client,
            ticker=Ticker(cluster.name, exporter.poll_interval, clock),
            stages=stages,
            channels=tuple(channels),
            log=ClusterLog(cluster.name, clock.monotonic),
        )

    # -- cycle outcome --------------------------------------------------------------------------

    def _deadline(self, event: object) -> float:
        # The event loop's clock is time.monotonic, the same clock CycleStarted records. A tick
        # may have waited in the tick channel; its cycle starts when discovery takes it (and
        # discovery re-stamps it), so the first stage's deadline counts from now.
        if isinstance(event, CycleStarted):
            return self.clock.monotonic() + self.settings.exporter.poll_interval
        return cycle_start(event).started_monotonic + self.settings.exporter.poll_interval

    def _report_skipped_ticks(self, pipeline: ClusterPipeline) -> None:
        skipped = pipeline.ticker.skipped
        self.self_metrics.ticks_skipped(pipeline.settings.name, skipped - pipeline.ticks_reported)
        pipeline.ticks_reported = skipped

    def _on_failure(self, pipeline: ClusterPipeline) -> Callable[[str, int, str, KlagError], None]:
        def failed(cluster: str, cycle: int, stage: str, error: KlagError) -> None:
            if isinstance(error, NotLeader):
                return
            self._report_skipped_ticks(pipeline)
            message = f"{stage}: {error}"
            self.status.cycle_failed(cluster, message)
            self.self_metrics.stage_failed(cluster, stage)
            self.self_metrics.cycle_finished(cluster, "error")
            # A back-off restates the failure that started it: the last error stays that cause.
            restated = isinstance(error, BackingOff) and pipeline.log.failing
            pipeline.log.cycle_failed(cycle, stage, error, restated=restated)

        return failed

    async def _publish(self, pipeline: ClusterPipeline) -> None:
        """Record the cycle's success and hand its snapshot to the sinks."""
        inbox: Channel[ClusterSnapshot] = pipeline.channels[-1]
        name = pipeline.settings.name
        try:
            async for snapshot in inbox:
                self._report_skipped_ticks(pipeline)
                self.status.cycle_succeeded(name, snapshot.duration_seconds)
                self.self_metrics.cycle_finished(name, "ok")
                self.self_metrics.partial_failures(name, "cycle", snapshot.error_count)
                self.self_metrics.carried(name, snapshot.carried_rows, snapshot.carried_groups)
                pipeline.log.cycle_succeeded(snapshot)
                if pipeline.withdrawn:
                    log.info("cluster_fresh_again", cluster=name, cycle=snapshot.cycle)
                    pipeline.withdrawn = False
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
                async with self._leadership_lock:
                    if self.status.is_leader:
                        await self.snapshots.send(snapshot)
        finally:
            self._publishers_left -= 1
            if self._publishers_left == 0:
                self.snapshots.close()

    async def _watch_staleness(self, stop: asyncio.Event) -> None:
        """Withdraw a cluster's series from every sink once its data is older than the threshold."""
        exporter = self.settings.exporter
        period = max(0.1, min(exporter.poll_interval, exporter.staleness_threshold) / 4)
        while not stop.is_set():
            for pipeline in self.pipelines:
                name = pipeline.settings.name
                if pipeline.withdrawn or self.status.is_fresh(name):
                    continue
                if not self.status.has_data(name):
                    continue
                pipeline.withdrawn = True
                log.warning(
                    "cluster_stale",
                    cluster=name,
                    staleness_threshold=exporter.staleness_threshold,
                    error=pipeline.log.last_error or None,
                )
                try:
                    await self.snapshots.send(ClusterWithdrawn(name, "stale"))
                except ChannelClosed:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)

    # -- lifecycle ------------------------------------------------------------------------------

    def add_to(self, runner: Runner, stop: asyncio.Event) -> None:
        for pipeline in self.pipelines:
            name = pipeline.settings.name
            ticks = pipeline.channels[0]
            runner.add(f"{name}.ticker", _bind(pipeline.ticker.run, ticks))
            runner.on_stop(pipeline.ticker.stop)
            on_failure = self._on_failure(pipeline)
            for index, stage in enumerate(pipeline.stages):
                runner.add(
                    f"{name}.{stage.name}",
                    _stage_runner(
                        stage,
                        pipeline.channels[index],
                        pipeline.channels[index + 1],
                        self._deadline,
                        on_failure,
                    ),
                )
            runner.add(f"{name}.publish", _bind(self._publish, pipeline))
        runner.add("staleness", _bind(self._watch_staleness, stop))
        summary_interval = self.settings.exporter.log_summary_interval
        if summary_interval > 0:
            logs = [pipeline.log for pipeline in self.pipelines]
            runner.add("log_summary", _bind(log_summaries, logs, summary_interval, stop))
        if self.elector is not None:
            runner.add("leadership", _bind(self.elector.run, stop))
        fanout = FanOut(self.inboxes)
        runner.add("fanout", _bind(fanout.run, self.snapshots))
        for sink in self.sinks:
            runner.add(f"sink.{sink.name}", _bind(sink.run, self.inboxes[sink.name]))

    async def close_clients(self) -> None:
        for pipeline in self.pipelines:
            try:
                await pipeline.client.close()
            except KlagError as exc:
                log.warning("cluster_close_failed", cluster=pipeline.settings.name, error=str(exc))


def _bind(function: Callable[..., Awaitable[None]], *args: Any) -> Callable[[], Awaitable[None]]:
    def factory() -> Awaitable[None]:
        return function(*args)

    return factory


def _stage_runner(
    stage: Any,
    inbox: Channel[Any],
    outbox: Channel[Any],
    deadline_of: Callable[[object], float],
    on_failure: Callable[[str, int, str, KlagError], None],
) -> Callable[[], Awaitable[None]]:
    def factory() -> Awaitable[None]:
        return run_stage(stage, inbox, outbox, deadline_of=deadline_of, on_failure=on_failure)

    return factory


async def serve(
    settings: Settings, *, stop: asyncio.Event | None = None, settle: bool = False
) -> None:
    """Run the exporter until ``stop`` is set (SIGTERM/SIGINT set it when not given).

    ``settle``: freeze the start-up heap out of the cyclic GC once set up (the process entry
    points do; see :mod:`klag_pipeline.telemetry.runtime`)."""
    from klag_pipeline.http import build_app, start_server

    exporter = Exporter(settings)
    stop_event = stop or asyncio.Event()
    if stop is None:
        install_signal_handlers(asyncio.get_running_loop(), stop_event)
    from klag_pipeline.http_auth import middlewares, server_ssl_context

    http = settings.exporter.http
    try:
        ssl_context = server_ssl_context(http)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [("exporter.http.tls_cert_file", f"cannot load the certificate and key: {exc}")]
        ) from exc
    app = build_app(
        exporter.prometheus,
        exporter.status,
        version=__version__,
        settings_view=redact_settings(settings),
        middlewares=middlewares(http),
    )
    server = await start_server(
        app, settings.exporter.http_host, settings.exporter.http_port, ssl_context=ssl_context
    )
    log.info(
        "exporter_started",
        version=__version__,
        http=f"{settings.exporter.http_host}:{settings.exporter.http_port}",
        tls=ssl_context is not None,
        basic_auth=bool(http.basic_auth_users),
        clusters=[c.name for c in settings.clusters],
        poll_interval=settings.exporter.poll_interval,
    )
    runner = Runner()
    exporter.add_to(runner, stop_event)
    if settle:
        runtime.settle_heap()
    try:
        await runner.run(stop_event, SHUTDOWN_TIMEOUT_SECONDS)
    finally:
        await exporter.close_clients()
        await server.cleanup()
        log.info("exporter_stopped")


def run(settings: Settings) -> int:
    runtime.tune_process()
    asyncio.run(serve(settings, settle=True))
    return 0
