"""Composition root of the long-running exporter: settings → clients → stages → sinks → runner.

``run`` / :func:`serve` is the exporter. The one-shot commands (``once``, ``check --connect``)
live in :mod:`klag_pipeline.commands`. Nothing else wires the exporter's components together.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import structlog

from klag_pipeline import package_version
from klag_pipeline.cluster_pipeline import ClusterPipeline, pause_board
from klag_pipeline.collection import collection_chain
from klag_pipeline.errors import ConfigError, KlagError
from klag_pipeline.kafka.factory import (
    ClientFactory,
    MembershipFactory,
    default_client_factory,
    default_membership_factory,
)
from klag_pipeline.leadership import LeadershipProvider
from klag_pipeline.pacing import PacedObserver
from klag_pipeline.pipeline.channel import Channel, DroppingChannel
from klag_pipeline.pipeline.clock import Clock, SystemClock
from klag_pipeline.pipeline.fanout import FanOut
from klag_pipeline.pipeline.runner import Runner, install_signal_handlers
from klag_pipeline.settings.redaction import redact_settings
from klag_pipeline.settings.schema import ClusterSettings, Settings
from klag_pipeline.sinks import Sink
from klag_pipeline.sinks.prometheus import PrometheusSink
from klag_pipeline.sinks.snapshots import SnapshotStore
from klag_pipeline.snapshot import SinkUpdate
from klag_pipeline.stages.early_offsets import EarlyPublication
from klag_pipeline.staleness import watch_staleness
from klag_pipeline.standby import LeadershipGate
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry import runtime
from klag_pipeline.telemetry.cluster_log import log_summaries
from klag_pipeline.telemetry.self_metrics import SelfMetrics

if TYPE_CHECKING:
    from klag_pipeline.sharding.gate import ShardGate

log = structlog.get_logger("klag_pipeline")

# Shutdown: time allowed for in-flight cycles to finish and sinks to flush after SIGTERM.
SHUTDOWN_TIMEOUT_SECONDS = 10.0
# How long a first cycle's timestamp pass waits for /metrics to show the cycle's partial snapshot
# (docs/pipeline.md, "The first scrape"); rendering it takes ~0.1-0.3 s at 20,000 group-partitions.
EARLY_SETTLE_SECONDS = 2.0


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
        membership_factory: MembershipFactory = default_membership_factory,
    ) -> None:
        """``leadership_provider`` replaces the one ``[exporter.leadership]`` would build (tests);
        it is used only when leadership is enabled. ``membership_factory`` builds the sharding
        group's membership (tests may wrap it)."""
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
        self.leadership = LeadershipGate(
            settings, self.status, self.self_metrics, self.clock, leadership_provider
        )
        self.elector = self.leadership.elector
        # Sharded mode (docs/scaling.md) replaces the leadership gate: the loader refuses both.
        self.sharding: ShardGate | None = None
        if exporter.sharding.enabled:
            from klag_pipeline.sharding.gate import ShardGate  # only sharded mode needs it

            self.sharding = ShardGate(
                settings, self.status, self.self_metrics, self.clock, membership_factory
            )
        self.gate: LeadershipGate | ShardGate = self.sharding or self.leadership
        self.prometheus = PrometheusSink(
            exporter.granularity,
            self.status,
            self.self_metrics,
            cluster_labels=self._cluster_labels(),
        )
        self.snapshot_store = SnapshotStore()  # what /api/v1 and the / page show
        self.sinks: list[Sink] = [
            self.prometheus,
            self.snapshot_store,
            *self._configured_sinks(),
            *extra_sinks,
        ]
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
        self.gate.attach(self.pipelines, self.snapshots)
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
                    version=package_version(),
                    instance_id=(
                        exporter.sharding.identity
                        if exporter.sharding.enabled
                        else exporter.leadership.identity
                    )
                    or socket.gethostname(),
                    on_error=self.self_metrics.sink_error,
                    up=self.status.fresh_by_cluster,
                    cluster_labels=self._cluster_labels(),
                )
            )
        if exporter.jsonl.enabled:
            from klag_pipeline.sinks.jsonl import JsonlSink

            sinks.append(JsonlSink(exporter.jsonl, on_error=self.self_metrics.sink_error))
        return sinks

    def _dropper(self, sink: str) -> Callable[[SinkUpdate], None]:
        def dropped(_: SinkUpdate) -> None:
            self.self_metrics.snapshot_dropped(sink)

        return dropped

    def _build_pipeline(
        self, cluster: ClusterSettings, client_factory: ClientFactory
    ) -> ClusterPipeline:
        exporter = self.settings.exporter
        pauses = pause_board(exporter.poll_interval, self.clock)
        observer = PacedObserver(self.self_metrics.for_cluster(cluster.name), pauses)
        client = client_factory(cluster, exporter, observer)
        attempted = partial(self.status.cycle_attempted, cluster.name)
        early = self._early_publication(cluster)
        chain = collection_chain(
            client,
            cluster,
            exporter,
            self.clock,
            long_running=True,
            evaluate=True,
            on_cycle_start=attempted,
            cache_lookup=self.self_metrics.cache_lookup,
            ownership=self.sharding.current if self.sharding is not None else None,
            early_offsets=early.offer if early is not None else None,
        )
        return ClusterPipeline(
            cluster,
            client,
            self.gate.gate(chain, on_skipped=attempted),
            poll_interval=exporter.poll_interval,
            queue_capacity=exporter.performance.queue_capacity,
            clock=self.clock,
            status=self.status,
            self_metrics=self.self_metrics,
            early=early,
            pauses=pauses,
        )

    def _early_publication(self, cluster: ClusterSettings) -> EarlyPublication | None:
        """The first cycle's offsets, published before its timestamp pass (docs/pipeline.md,
        "The first scrape"). Not in sharded mode (its publication narrows and republishes every
        snapshot it is given), nor without a timestamp pass (sampling off, or rate mode)."""
        sampling = self.settings.exporter.timestamp_sampling
        if self.sharding is not None or not sampling.enabled or sampling.mode == "rate":
            return None
        return EarlyPublication(
            cluster.labels, self.clock, settle=partial(self._on_metrics, cluster.name)
        )

    async def _on_metrics(self, cluster: str) -> None:
        """Return once /metrics carries ``cluster``'s series, or after EARLY_SETTLE_SECONDS.

        The first cycle's timestamp pass waits here after the partial snapshot: started at
        once, its CPU-bound bookkeeping and record decoding would share the CPU (and the GIL)
        with the Prometheus sink's rendering of that snapshot, which took 0.29 s instead of
        0.13 s at 20,000 group-partitions (medians, load ~1.8; 0.6-0.8 s instead of 0.3 s at
        load ~3.8). The wait is bounded: a sink that does not take the snapshot (a full inbox)
        must not hold the cycle."""
        prometheus = self.prometheus
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EARLY_SETTLE_SECONDS):
                while cluster not in prometheus.clusters:
                    await prometheus.wait_applied(prometheus.applied + 1)

    def _publisher_done(self) -> None:
        self._publishers_left -= 1
        if self._publishers_left == 0:
            self.snapshots.close()

    # -- lifecycle ------------------------------------------------------------------------------

    def add_to(self, runner: Runner, stop: asyncio.Event) -> None:
        exporter = self.settings.exporter
        for pipeline in self.pipelines:
            pipeline.add_to(runner, self.gate.publish, self._publisher_done)
        runner.add(
            "staleness",
            lambda: watch_staleness(
                self.pipelines,
                self.status,
                self.snapshots,
                staleness_threshold=exporter.staleness_threshold,
                poll_interval=exporter.poll_interval,
                stop=stop,
            ),
        )
        if exporter.log_summary_interval > 0:
            logs = [pipeline.log for pipeline in self.pipelines]
            runner.add(
                "log_summary", lambda: log_summaries(logs, exporter.log_summary_interval, stop)
            )
        if self.elector is not None:
            elector = self.elector
            runner.add("leadership", lambda: elector.run(stop))
        if self.sharding is not None:
            sharding = self.sharding
            runner.add("sharding", lambda: sharding.run(stop))
        # A partial snapshot (a first cycle's early offsets) is for /metrics only: the other
        # sinks record each cycle once, complete (docs/pipeline.md, "The first scrape").
        fanout = FanOut(self.inboxes, partial_to=(self.prometheus.name,))
        runner.add("fanout", lambda: fanout.run(self.snapshots))
        for sink in self.sinks:
            runner.add(f"sink.{sink.name}", partial(sink.run, self.inboxes[sink.name]))

    async def close_clients(self) -> None:
        for pipeline in self.pipelines:
            try:
                await pipeline.client.close()
            except KlagError as exc:
                log.warning("cluster_close_failed", cluster=pipeline.name, error=str(exc))


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
        version=package_version(),
        settings_view=redact_settings(settings),
        middlewares=middlewares(http),
        snapshots=exporter.snapshot_store,
    )
    server = await start_server(
        app, settings.exporter.http_host, settings.exporter.http_port, ssl_context=ssl_context
    )
    log.info(
        "exporter_started",
        version=package_version(),
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
