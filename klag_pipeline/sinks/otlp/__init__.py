"""The OTLP sink: the compatibility families of SPEC §4 and the consumer health families pushed
as gauges (and one cumulative counter) over gRPC or HTTP.

The sink owns its MeterProvider (never the global one), a ``PeriodicExportingMetricReader`` that
exports every ``export_interval`` from the SDK's own thread, and one observable gauge per family.
The gauge callbacks run in that thread: they only read :attr:`OtlpSink._view`, an immutable
mapping of cluster → latest snapshot that the sink's task swaps atomically, so a callback never
waits for the event loop and the loop never waits for an export. A withdrawn cluster is simply
no longer in the view, so its series stop being exported at the next interval.

Everything that may take time (counting a snapshot's attribute sets, replacing a provider,
flushing and shutting down at the end) runs in a worker thread. See docs/otlp.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import structlog
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from klag_pipeline.metrics_catalog import CLUSTER_UP, UP
from klag_pipeline.settings.schema import Granularity, OtelSettings
from klag_pipeline.sinks.otlp.exporter import (
    ExportHealth,
    ObservedExporter,
    build_exporter,
    display_endpoint,
    load_tls,
    plaintext,
)
from klag_pipeline.sinks.otlp.families import (
    COUNTER_NAMES,
    CardinalityBudget,
    SeriesKeys,
    cluster_up_observations,
    family_descriptions,
    observe,
    series_keys,
)
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate

__all__ = ["OtlpSink"]

log = structlog.get_logger("klag_pipeline.sinks.otlp")

SERVICE_NAME: Final = "klag-pipeline"
METER_NAME: Final = "klag_pipeline"
# The SDK's own default per-instrument limit; the budget raises it as the live series grow.
DEFAULT_CARDINALITY_FLOOR: Final = 2000


@dataclass(eq=False, slots=True)
class _Generation:
    """One MeterProvider. A retired generation's gauges observe nothing, so the final export the
    SDK makes when it shuts down is empty (no request) instead of overflowing."""

    provider: MeterProvider
    retired: bool = False


class OtlpSink:
    """Pushes every cluster's latest snapshot to an OTLP receiver (SPEC §6).

    ``up``, when given, is called from the SDK's export thread and returns every cluster's
    freshness (:meth:`~klag_pipeline.status.StatusBoard.fresh_by_cluster`; it must only read
    state): the sink reports ``kafka_lag_exporter_up`` (all fresh) and the per-cluster
    ``klag_pipeline_cluster_up``, whose attributes are ``cluster_name`` and that cluster's entry
    in ``cluster_labels``. ``on_error`` is called with the sink's
    name once per failed export, also from that thread. ``cardinality_floor`` is the smallest
    per-family limit of distinct attribute sets a provider is built with (see
    :class:`~klag_pipeline.sinks.otlp.families.CardinalityBudget`).

    Construction validates the settings (TLS files readable, ``insecure`` consistent with the
    endpoint) and raises :class:`~klag_pipeline.errors.ConfigError`; the provider and its export
    thread only exist while :meth:`run` runs.
    """

    name = "otlp"

    def __init__(
        self,
        settings: OtelSettings,
        *,
        granularity: Granularity,
        version: str,
        instance_id: str,
        on_error: Callable[[str], None] | None = None,
        up: Callable[[], Mapping[str, bool]] | None = None,
        cluster_labels: Mapping[str, Mapping[str, str]] | None = None,
        cardinality_floor: int = DEFAULT_CARDINALITY_FLOOR,
    ) -> None:
        plaintext(settings)
        self._settings = settings
        self._granularity: Granularity = granularity
        self._version = version
        self._tls = load_tls(settings)
        self._up = up
        self._cluster_labels: Mapping[str, Mapping[str, str]] = cluster_labels or {}
        self._resource = Resource.create(
            {
                "service.name": SERVICE_NAME,
                "service.version": version,
                "service.instance.id": instance_id,
                **settings.resource_attributes,
            }
        )
        self._families = family_descriptions(granularity, with_up=up is not None)
        self._health = ExportHealth(
            endpoint=settings.endpoint,
            protocol=settings.protocol,
            secrets=settings.headers,
            on_error=on_error,
        )
        self._budget = CardinalityBudget(cardinality_floor)
        self._view: Mapping[str, ClusterSnapshot] = MappingProxyType({})
        self._keys: dict[str, SeriesKeys] = {}
        self._generation: _Generation | None = None
        self.generations = 0  # MeterProviders built so far (see CardinalityBudget)

    @property
    def health(self) -> ExportHealth:
        """Export outcomes so far (for tests and diagnostics)."""
        return self._health

    @property
    def clusters(self) -> tuple[str, ...]:
        """Clusters whose series are currently exported, in name order."""
        return tuple(sorted(self._view))

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        self._generation = await asyncio.to_thread(self._new_generation, self._budget.limit)
        log.info(
            "otlp_sink_started",
            endpoint=display_endpoint(self._settings.endpoint),
            protocol=self._settings.protocol,
            export_interval=self._settings.export_interval,
        )
        try:
            async for update in inbox:
                await self._apply(update)
        finally:
            # The SDK's flush and shutdown block on the network, bounded by the timeout.
            await asyncio.to_thread(self._close, self._generation)
            log.info(
                "otlp_sink_stopped",
                exports_succeeded=self._health.succeeded,
                exports_failed=self._health.failed,
            )

    async def _apply(self, update: SinkUpdate) -> None:
        if isinstance(update, ClusterWithdrawn):
            if update.cluster in self._view:
                view = dict(self._view)
                del view[update.cluster]
                self._view = MappingProxyType(view)
                del self._keys[update.cluster]
            return
        keys = await asyncio.to_thread(series_keys, update, self._granularity)
        self._keys[update.cluster] = keys
        if self._budget.admit(keys):
            limit = self._budget.reset(self._keys.values())
            await asyncio.to_thread(self._replace_generation, limit)
        # Only now: the snapshot that outgrew the old provider's limit never reaches it.
        self._view = MappingProxyType({**self._view, update.cluster: update})

    def _gauge_callback(
        self, family: str, generation: _Generation
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            if generation.retired:
                return ()
            if family == UP.name:
                assert self._up is not None
                return (Observation(1 if all(self._up().values()) else 0),)
            if family == CLUSTER_UP.name:
                assert self._up is not None
                return cluster_up_observations(self._up(), self._cluster_labels)
            return observe(family, self._view.values())

        return callback

    def _new_generation(self, limit: int) -> _Generation:
        reader = PeriodicExportingMetricReader(
            ObservedExporter(build_exporter(self._settings, self._tls), self._health),
            export_interval_millis=self._settings.export_interval * 1000,
            export_timeout_millis=self._settings.timeout * 1000,
            cardinality_limits={ObservableGauge: limit, ObservableCounter: limit},
        )
        generation = _Generation(
            MeterProvider(resource=self._resource, metric_readers=[reader], shutdown_on_exit=False)
        )
        meter = generation.provider.get_meter(METER_NAME, self._version)
        for family, description in self._families.items():
            # The rebalance counter is a cumulative sum (the SDK's default temporality for a
            # counter), the rest gauges.
            create = (
                meter.create_observable_counter
                if family in COUNTER_NAMES
                else meter.create_observable_gauge
            )
            create(
                family,
                callbacks=[self._gauge_callback(family, generation)],
                description=description,
            )
        self.generations += 1
        return generation

    def _replace_generation(self, limit: int) -> None:
        old = self._generation
        self._generation = self._new_generation(limit)
        log.info("otlp_provider_replaced", cardinality_limit=limit, generation=self.generations)
        if old is not None:
            old.retired = True
            _shutdown(old.provider, self._settings.timeout * 1000)

    def _close(self, generation: _Generation | None) -> None:
        """Export the current state once more, then stop the export thread, within ``timeout``."""
        if generation is None:
            return
        timeout = self._settings.timeout
        deadline = time.monotonic() + timeout
        try:
            generation.provider.force_flush(timeout_millis=timeout * 1000)
        # MeterProvider.force_flush raises a bare Exception naming the readers that failed; the
        # export itself has already been counted and logged by ExportHealth.
        except Exception as exc:
            log.warning("otlp_flush_failed", error=str(exc))
        # The provider refuses to shut a reader down once the deadline has passed, which would
        # leave its export thread running: always give shutdown a little time.
        _shutdown(generation.provider, max((deadline - time.monotonic()) * 1000, 100.0))


def _shutdown(provider: MeterProvider, timeout_millis: float) -> None:
    try:
        provider.shutdown(timeout_millis=timeout_millis)
    # Like force_flush, shutdown reports a reader's failure as a bare Exception; the reader
    # thread has been told to stop either way, and nothing is left to do about it.
    except Exception as exc:
        log.warning("otlp_shutdown_failed", error=str(exc))
