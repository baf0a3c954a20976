"""The Prometheus store: the klag-exporter compatibility families, pre-rendered (SPEC §4, §6).

Every snapshot is rendered once, off the event loop, into per-cluster chunks (one compressed
segment of sample lines per family, see :mod:`.render` and :mod:`.deflate`); the chunks of all
clusters are then ordered family by family into one cached body, without copying or
recompressing them. A scrape only appends the small health part (``kafka_lag_exporter_up``,
``klag_pipeline_cluster_up``) and the self-metrics to that cached body, so it never re-renders
cluster series and never touches Kafka, however many groups there are. A gzip scrape gets the
segments as they are, in one gzip member; a plain-text scrape gets them decompressed piece by
piece while the response is written.

The same cached body serves both formats: every family in it is a gauge and label and value
spelling is identical in text 0.0.4 and OpenMetrics 1.0. What differs is rendered per scrape:
the trailer (``# EOF``), the self-metrics, and the headers of the counters read from snapshots
(``kafka_consumergroup_group_rebalances_total``: OpenMetrics names the family without
``_total``), whose pre-rendered chunks (one line per group) follow the cached body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from types import MappingProxyType
from typing import Final

from klag_pipeline.exposition import header, wants_gzip, wants_openmetrics
from klag_pipeline.metrics_catalog import CLUSTER_UP, UP
from klag_pipeline.settings.schema import Granularity
from klag_pipeline.sinks.prometheus.deflate import Joined, gzip_parts, inflate, join
from klag_pipeline.sinks.prometheus.render import (
    ClusterChunks,
    RenderMemory,
    assemble,
    assemble_counters,
    cluster_label_text,
    render_cluster,
)
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry import runtime
from klag_pipeline.telemetry.self_metrics import SelfMetrics

TEXT_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_UP_HEADER: Final = header(UP)
_CLUSTER_UP_HEADER: Final = header(CLUSTER_UP)


@dataclass(frozen=True, slots=True)
class Body:
    """A response body: its length, and its bytes as parts to write in order. The parts of a
    plain-text body are decompressed as they are iterated, once."""

    length: int
    parts: Iterable[bytes]


@dataclass(frozen=True, slots=True)
class _Exposition:
    """The cached cluster body: the clusters' chunks, and per format (OpenMetrics or not) the
    segments in exposition order — HELP/TYPE headers, the clusters' chunks, then the counters —
    with their combined length and CRC-32."""

    chunks: Mapping[str, ClusterChunks]
    bodies: Mapping[bool, Joined]


def _prepare(chunks: Mapping[str, ClusterChunks]) -> _Exposition:
    gauges = join(assemble(chunks))
    bodies = {om: join(assemble_counters(chunks, om), after=gauges) for om in (False, True)}
    return _Exposition(MappingProxyType(dict(chunks)), MappingProxyType(bodies))


class PrometheusSink:
    """Serves the latest snapshot of every cluster to ``/metrics`` (see the module docstring).

    ``run`` is the only writer; ``render`` is a cached lookup plus a few kilobytes of
    scrape-time text, so a scrape during a pending update returns the previous body at once.
    """

    name = "prometheus"

    def __init__(
        self,
        granularity: Granularity,
        status: StatusBoard,
        self_metrics: SelfMetrics,
        *,
        cluster_labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """``cluster_labels``: each cluster's custom labels, carried by its
        ``klag_pipeline_cluster_up`` series like by every other series of the cluster."""
        self._granularity: Granularity = granularity
        self._status = status
        self._self_metrics = self_metrics
        labels = cluster_labels or {}
        # Rendered per scrape (freshness changes with time alone), so the label text is built
        # once here; every configured cluster has a series from the start.
        self._cluster_up_prefixes = tuple(
            (name, f"{CLUSTER_UP.name}{{{cluster_label_text(name, labels.get(name, {}))}}} ")
            for name in sorted(status.cluster_names)
        )
        self._exposition = _prepare({})
        self._memories: dict[str, RenderMemory] = {}
        """Per cluster, what its last render can lend the next (only ``_next`` touches it)."""
        self._gzipped: dict[bool, tuple[_Exposition, bytes, Body]] = {}
        """Per format: the exposition and scrape-time part last gzipped, and the result."""
        self._applied = 0
        self._changed = asyncio.Event()

    @property
    def clusters(self) -> tuple[str, ...]:
        """Clusters whose series are currently exported, in name order."""
        return tuple(sorted(self._exposition.chunks))

    @property
    def applied(self) -> int:
        """Updates applied so far."""
        return self._applied

    async def wait_applied(self, count: int) -> None:
        """Return once ``count`` updates have been applied (callers bound it with a timeout)."""
        while self._applied < count:
            await self._changed.wait()

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        async for update in inbox:
            # Rendering 20,000 rows takes a few hundred ms: a worker thread keeps the event
            # loop (and so every scrape and health probe) responsive meanwhile.
            exposition = await asyncio.to_thread(self._next, self._exposition.chunks, update)
            self._commit(exposition)
            if exposition is not None:
                # The previous exposition is garbage now: hand its pages back to the system.
                await asyncio.to_thread(runtime.release_free_memory)

    def apply(self, update: SinkUpdate) -> None:
        """Apply one update synchronously (for callers without an inbox); not mixed with ``run``."""
        self._commit(self._next(self._exposition.chunks, update))

    def _next(self, chunks: Mapping[str, ClusterChunks], update: SinkUpdate) -> _Exposition | None:
        new = dict(chunks)
        if isinstance(update, ClusterSnapshot):
            memory = self._memories.setdefault(update.cluster, RenderMemory())
            new[update.cluster] = render_cluster(update, self._granularity, memory)
        elif isinstance(update, ClusterWithdrawn):
            self._memories.pop(update.cluster, None)
            if update.cluster not in new:
                return None
            del new[update.cluster]
        return _prepare(new)

    def _commit(self, exposition: _Exposition | None) -> None:
        if exposition is not None:
            self._exposition = exposition
            self._gzipped.clear()  # holds the previous exposition otherwise
        self._applied += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _health_part(self) -> bytes:
        """``kafka_lag_exporter_up`` and ``klag_pipeline_cluster_up``, as of now."""
        fresh = self._status.fresh_by_cluster()
        text = f"{_UP_HEADER}{UP.name} {1 if all(fresh.values()) else 0}\n"
        if self._cluster_up_prefixes:
            text += _CLUSTER_UP_HEADER
            text += "".join(
                f"{prefix}{1 if fresh[name] else 0}\n" for name, prefix in self._cluster_up_prefixes
            )
        return text.encode()

    def render(
        self, accept: str | None, accept_encoding: str | None
    ) -> tuple[bytes, str, str | None]:
        """``(body, content type, content encoding or None)`` for one scrape."""
        body, content_type, encoding = self.render_parts(accept, accept_encoding)
        return b"".join(body.parts), content_type, encoding

    def render_parts(
        self, accept: str | None, accept_encoding: str | None
    ) -> tuple[Body, str, str | None]:
        """Like :meth:`render`, with the body as parts to write in order, so no scrape copies
        or decompresses the (tens of MB of) text at once."""
        openmetrics = wants_openmetrics(accept)
        exposition = self._exposition
        body = exposition.bodies[openmetrics]
        tail = [self._health_part()]
        self_metrics = self._self_metrics.render(openmetrics)
        if openmetrics:
            self_metrics = self_metrics.removesuffix(b"# EOF\n")
        tail.append(self_metrics)
        if openmetrics:
            tail.append(b"# EOF\n")
        scrape_part = b"".join(tail)
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        if wants_gzip(accept_encoding):
            # Scrapes between two changes (of the clusters' body, the self-metrics or a queue
            # depth) get the same bytes: one gzip member, built once, serves all of them.
            cached = self._gzipped.get(openmetrics)
            if cached is None or cached[0] is not exposition or cached[1] != scrape_part:
                gzipped = b"".join(gzip_parts(body, scrape_part))
                cached = (exposition, scrape_part, Body(len(gzipped), (gzipped,)))
                self._gzipped[openmetrics] = cached
            return cached[2], content_type, "gzip"
        length = body.size + len(scrape_part)
        return Body(length, chain(inflate(body.segments), (scrape_part,))), content_type, None
