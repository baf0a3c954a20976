"""The exporter's own ``klag_pipeline_*`` metrics (SPEC §4, last paragraph).

Kept in a private :class:`~prometheus_client.CollectorRegistry`, never the process-global one,
so two instances (tests, ``once``) never share counters and nothing a library registers globally
leaks into ``/metrics``. Names, help text and label names come from
:mod:`klag_pipeline.metrics_catalog`, which tests check against ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from klag_pipeline.exposition import escape_label_value, header
from klag_pipeline.metrics_catalog import (
    CACHE_HITS,
    CACHE_MISSES,
    CARRIED_GROUPS,
    CARRIED_ROWS,
    CYCLES,
    KAFKA_REQUEST_DURATION,
    KAFKA_REQUESTS,
    KAFKA_THROTTLE_SECONDS,
    KAFKA_THROTTLED,
    LEADER,
    LEADERSHIP_ERRORS,
    LEADERSHIP_TRANSITIONS,
    PARTIAL_FAILURES,
    QUEUE_DEPTH,
    SHARD_BUCKETS,
    SHARD_GROUPS,
    SHARD_MEMBERS,
    SHARD_REBALANCES,
    SHARD_ROWS,
    SINK_DROPPED,
    SINK_ERRORS,
    STAGE_ERRORS,
    TICKS_SKIPPED,
    TIME_LAG_DENIED_TOPICS,
    Family,
)

REQUEST_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Broker round trips: sub-millisecond on loopback up to ``kafka_timeout`` (30 s default)."""


def _declaration(family: Family) -> tuple[str, str, tuple[str, ...]]:
    """prometheus_client's ``(name, documentation, labelnames)`` of a catalog entry (a counter's
    ``_total`` is stripped by prometheus_client itself and added back to its sample)."""
    return family.name, family.help, family.labels.names


class _QueueDepths:
    """``klag_pipeline_queue_depth``, read from each registered queue when scraped so it is never
    out of date. Rendered by hand (the same text in both formats): it is the only part of the
    self-metrics that changes without a method call, so it is rendered on every scrape, and
    prometheus_client's generic exposition would cost more than the rest of a cached scrape."""

    HEADER = header(QUEUE_DEPTH).encode()

    def __init__(self) -> None:
        self._depths: dict[str, tuple[str, Callable[[], int]]] = {}

    def add(self, name: str, depth_fn: Callable[[], int]) -> None:
        if name in self._depths:
            raise ValueError(f"queue {name!r} is already registered")
        prefix = f'{QUEUE_DEPTH.name}{{queue="{escape_label_value(name)}"}} '
        self._depths[name] = (prefix, depth_fn)

    def render(self) -> bytes:
        lines = [
            f"{prefix}{depth_fn()}\n" for _, (prefix, depth_fn) in sorted(self._depths.items())
        ]
        return self.HEADER + "".join(lines).encode()


class SelfMetrics:
    """Counters, histograms and gauges about the exporter itself.

    Implements :class:`klag_pipeline.kafka.port.RequestObserver`; the stages, sinks and cluster
    loops call the other methods. Every method is cheap and never raises for a valid call.

    Rendering the counters and histograms with prometheus_client costs milliseconds, which would
    dominate every scrape (and make 20 concurrent scrapers queue behind each other), so their
    exposition is cached until the next change: every mutation goes through a method here and
    bumps ``_generation``. Queue depths are read at scrape time and never cached.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        """Counters and histograms (changed only through this class's methods)."""
        self._generation = 0
        self._rendered: dict[bool, tuple[int, bytes]] = {}
        registry = self.registry
        self._stage_errors = Counter(*_declaration(STAGE_ERRORS), registry=registry)
        self._cycles = Counter(*_declaration(CYCLES), registry=registry)
        self._partial_failures = Counter(*_declaration(PARTIAL_FAILURES), registry=registry)
        self._ticks_skipped = Counter(*_declaration(TICKS_SKIPPED), registry=registry)
        self._dropped = Counter(*_declaration(SINK_DROPPED), registry=registry)
        self._sink_errors = Counter(*_declaration(SINK_ERRORS), registry=registry)
        self._cache_hits = Counter(*_declaration(CACHE_HITS), registry=registry)
        self._cache_misses = Counter(*_declaration(CACHE_MISSES), registry=registry)
        self._requests = Counter(*_declaration(KAFKA_REQUESTS), registry=registry)
        self._request_seconds = Histogram(
            *_declaration(KAFKA_REQUEST_DURATION),
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )
        self._throttled = Counter(*_declaration(KAFKA_THROTTLED), registry=registry)
        self._throttle_seconds = Counter(*_declaration(KAFKA_THROTTLE_SECONDS), registry=registry)
        self._carried = Gauge(*_declaration(CARRIED_ROWS), registry=registry)
        self._carried_groups = Gauge(*_declaration(CARRIED_GROUPS), registry=registry)
        self._time_lag_denied = Gauge(*_declaration(TIME_LAG_DENIED_TOPICS), registry=registry)
        self._queues = _QueueDepths()
        self._leadership: LeadershipMetrics | None = None
        self._sharding: ShardMetrics | None = None

    # RequestObserver -------------------------------------------------------------------------

    def for_cluster(self, cluster: str) -> ClusterRequestObserver:
        """The :class:`~klag_pipeline.kafka.port.RequestObserver` of one cluster's client."""
        return ClusterRequestObserver(self, cluster)

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        """A request of a client that has no cluster name (``check --connect``, tests)."""
        self.request_done("", api, broker, outcome, seconds)

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        self.throttled("", api, broker, throttle_ms)

    def request_done(
        self, cluster: str, api: str, broker: str, outcome: str, seconds: float
    ) -> None:
        self._generation += 1
        self._requests.labels(cluster, api, broker, outcome).inc()
        self._request_seconds.labels(api).observe(seconds)

    def throttled(self, cluster: str, api: str, broker: str, throttle_ms: int) -> None:
        if throttle_ms <= 0:
            return
        self._generation += 1
        self._throttled.labels(cluster, api, broker).inc()
        self._throttle_seconds.labels(cluster, api, broker).inc(throttle_ms / 1000)

    # Cycles and stages -----------------------------------------------------------------------

    def stage_failed(self, cluster: str, stage: str) -> None:
        """A whole cycle of ``cluster`` failed in ``stage`` (discovery, watermarks, …)."""
        self._generation += 1
        self._stage_errors.labels(cluster, stage).inc()

    def cycle_finished(self, cluster: str, outcome: str) -> None:
        """``outcome``: a short fixed word, "ok" or "error"."""
        self._generation += 1
        self._cycles.labels(cluster, outcome).inc()

    def partial_failures(self, cluster: str, stage: str, n: int) -> None:
        if n > 0:
            self._generation += 1
            self._partial_failures.labels(cluster, stage).inc(n)

    def carried(self, cluster: str, rows: int, groups: int) -> None:
        """How much of ``cluster``'s last published snapshot repeats earlier values."""
        self._generation += 1
        self._carried.labels(cluster).set(rows)
        self._carried_groups.labels(cluster).set(groups)

    def time_lag_denied(self, cluster: str, topics: int) -> None:
        """Topics of ``cluster``'s last published snapshot whose Fetch the broker refused."""
        self._generation += 1
        self._time_lag_denied.labels(cluster).set(topics)

    def ticks_skipped(self, cluster: str, n: int) -> None:
        if n > 0:
            self._generation += 1
            self._ticks_skipped.labels(cluster).inc(n)

    # Sinks and queues ------------------------------------------------------------------------

    def snapshot_dropped(self, sink: str) -> None:
        self._generation += 1
        self._dropped.labels(sink).inc()

    def sink_error(self, sink: str) -> None:
        self._generation += 1
        self._sink_errors.labels(sink).inc()

    def register_queue(self, name: str, depth_fn: Callable[[], int]) -> None:
        """Expose ``depth_fn()`` as ``klag_pipeline_queue_depth{queue=name}``, read per scrape.

        ``depth_fn`` runs on the scraping task, so it must be cheap and non-blocking.
        """
        self._queues.add(name, depth_fn)

    def cache_lookup(self, hit: bool) -> None:
        self._generation += 1
        (self._cache_hits if hit else self._cache_misses).inc()

    # High availability -----------------------------------------------------------------------

    def leadership(self, provider: str) -> LeadershipMetrics:
        """The election loop's metrics for ``provider`` (registered on first use, so an exporter
        without leader election exposes none of them)."""
        if self._leadership is None:
            self._leadership = LeadershipMetrics(self, provider)
        return self._leadership

    def sharding(self) -> ShardMetrics:
        """Sharded mode's metrics (registered on first use, like the leadership ones)."""
        if self._sharding is None:
            self._sharding = ShardMetrics(self)
        return self._sharding

    # Exposition ------------------------------------------------------------------------------

    def render(self, openmetrics: bool) -> bytes:
        """Every self-metric as a complete document (OpenMetrics ends with ``# EOF``)."""
        cached = self._rendered.get(openmetrics)
        if cached is None or cached[0] != self._generation:
            cached = (self._generation, _render(self.registry, openmetrics))
            self._rendered[openmetrics] = cached
        queues = self._queues.render()
        if openmetrics:
            return cached[1].removesuffix(b"# EOF\n") + queues + b"# EOF\n"
        return cached[1] + queues


def _render(registry: CollectorRegistry, openmetrics: bool) -> bytes:
    if openmetrics:
        # prometheus_client leaves this function unannotated.
        body: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
        return body
    return generate_text(registry)


class LeadershipMetrics:
    """``klag_pipeline_leader``, ``klag_pipeline_leadership_transitions`` and
    ``klag_pipeline_leadership_errors`` for one provider; the election loop's observer."""

    def __init__(self, metrics: SelfMetrics, provider: str) -> None:
        self._metrics = metrics
        self._provider = provider
        registry = metrics.registry
        self._leader = Gauge(*_declaration(LEADER), registry=registry)
        self._transitions = Counter(*_declaration(LEADERSHIP_TRANSITIONS), registry=registry)
        self._errors = Counter(*_declaration(LEADERSHIP_ERRORS), registry=registry)
        self._leader.labels(provider).set(0)
        self._errors.labels(provider)
        metrics._generation += 1

    def role(self, leader: bool) -> None:
        self._metrics._generation += 1
        self._leader.labels(self._provider).set(1 if leader else 0)
        self._transitions.labels(self._provider, "leader" if leader else "standby").inc()

    def error(self) -> None:
        self._metrics._generation += 1
        self._errors.labels(self._provider).inc()


class ShardMetrics:
    """``klag_pipeline_shard_*``: what this replica owns and exports in sharded mode."""

    def __init__(self, metrics: SelfMetrics) -> None:
        self._metrics = metrics
        registry = metrics.registry
        self._buckets = Gauge(*_declaration(SHARD_BUCKETS), registry=registry)
        self._groups = Gauge(*_declaration(SHARD_GROUPS), registry=registry)
        self._rows = Gauge(*_declaration(SHARD_ROWS), registry=registry)
        self._members = Gauge(*_declaration(SHARD_MEMBERS), registry=registry)
        self._rebalances = Counter(*_declaration(SHARD_REBALANCES), registry=registry)
        self._members.set(0)
        metrics._generation += 1

    def owned(self, buckets: dict[str, int], members: int, new_assignment: bool) -> None:
        self._metrics._generation += 1
        for cluster, count in buckets.items():
            self._buckets.labels(cluster).set(count)
        self._members.set(members)
        if new_assignment:
            self._rebalances.inc()

    def exported(self, cluster: str, groups: int, rows: int) -> None:
        self._metrics._generation += 1
        self._groups.labels(cluster).set(groups)
        self._rows.labels(cluster).set(rows)


class ClusterRequestObserver:
    """Labels one cluster's requests with its ``cluster_name`` (broker ids repeat across
    clusters)."""

    def __init__(self, metrics: SelfMetrics, cluster: str) -> None:
        self._metrics = metrics
        self._cluster = cluster

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        self._metrics.request_done(self._cluster, api, broker, outcome, seconds)

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        self._metrics.throttled(self._cluster, api, broker, throttle_ms)
