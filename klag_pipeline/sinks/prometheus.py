"""The Prometheus store: the klag-exporter compatibility families, pre-rendered (SPEC §4, §6).

Every snapshot is rendered once, off the event loop, into per-cluster chunks (one string of
sample lines per family); the chunks of all clusters are then joined family by family into one
cached body, and its gzip prefix is compressed at the same time. A scrape only appends the small
health part (``kafka_lag_exporter_up``, ``klag_pipeline_cluster_up``) and the self-metrics to
that cached body, so it never re-renders cluster series and never touches Kafka, however many
groups there are.

The same cached body serves both formats: every compatibility family is a gauge and label and
value spelling is identical in text 0.0.4 and OpenMetrics 1.0, so only the trailer (``# EOF``)
and the self-metrics differ, and both are rendered per scrape.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from klag_pipeline.exposition import (
    escape_label_value,
    format_value,
    wants_gzip,
    wants_openmetrics,
)
from klag_pipeline.settings.schema import Granularity
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, PartitionRow, SinkUpdate
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry import runtime
from klag_pipeline.telemetry.self_metrics import SelfMetrics

TEXT_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Exposition text is so repetitive that level 1 compresses as well as level 6 (measured: 29 MB →
# 0.52 MB vs 0.54 MB) in a third of the time.
GZIP_LEVEL: Final = 1

# Family name → HELP text, in exposition order. Every family is a gauge (the two `_total` names
# are current counts kept for klag-exporter compatibility, not counters).
FAMILY_HELP: Final[Mapping[str, str]] = MappingProxyType(
    {
        "kafka_partition_latest_offset": "Latest (high watermark) offset of a partition.",
        "kafka_partition_earliest_offset": "Earliest (low watermark) offset of a partition.",
        "kafka_consumergroup_group_offset": "Committed offset of a consumer group partition.",
        "kafka_consumergroup_group_lag": "Offset lag max(high watermark - committed, 0).",
        "kafka_consumergroup_group_consumable_lag": (
            "Records the group can still consume where that differs from the offset lag: 0 when "
            "only transaction markers (or aborted records under read_committed) remain."
        ),
        "kafka_consumergroup_group_lag_seconds": (
            "Age in seconds of the record at the committed offset (0 when there is no lag)."
        ),
        "kafka_consumergroup_group_messages_lost": (
            "Messages deleted by retention before the group read them, max(low - committed, 0)."
        ),
        "kafka_consumergroup_group_retention_margin": (
            "Committed offset minus low watermark; negative means data loss."
        ),
        "kafka_consumergroup_group_lag_retention_ratio": (
            "Lag as a percentage of the retained window (above 100 means data loss)."
        ),
        "kafka_consumergroup_group_max_lag": "Maximum partition offset lag of a consumer group.",
        "kafka_consumergroup_group_max_lag_seconds": (
            "Maximum partition time lag in seconds of a consumer group."
        ),
        "kafka_consumergroup_group_sum_lag": "Sum of partition offset lag of a consumer group.",
        "kafka_consumergroup_group_topic_sum_lag": (
            "Sum of partition offset lag of a consumer group per topic."
        ),
        "kafka_consumergroup_group_state": (
            "Group state: 0 Unknown, 1 PreparingRebalance, 2 CompletingRebalance, 3 Stable, "
            "4 Dead, 5 Empty, 6 Assigning, 7 Reconciling."
        ),
        "kafka_consumergroup_poll_time_ms": "Time spent in broker calls in the last cycle, in ms.",
        "kafka_lag_exporter_scrape_duration_seconds": "Duration of the last collection cycle.",
        "kafka_lag_exporter_last_update_timestamp_seconds": (
            "Unix time of the last successful collection cycle."
        ),
        "kafka_lag_exporter_compaction_detected_total": (
            "Group partitions whose committed record was removed by compaction (current count)."
        ),
        "kafka_lag_exporter_data_loss_partitions_total": (
            "Group partitions whose committed offset is below the low watermark (current count)."
        ),
    }
)
UP_HELP: Final = "1 when every cluster has fresh data (within staleness_threshold), else 0."
CLUSTER_UP_FAMILY: Final = "klag_pipeline_cluster_up"
CLUSTER_UP_HELP: Final = (
    "1 when this cluster's last successful cycle is within staleness_threshold, else 0 "
    "(also 0 before the first one)."
)

_HEADERS: Final[Mapping[str, bytes]] = MappingProxyType(
    {
        name: f"# HELP {name} {text}\n# TYPE {name} gauge\n".encode()
        for name, text in FAMILY_HELP.items()
    }
)

ClusterChunks = Mapping[str, bytes]
"""One cluster's rendered sample lines (UTF-8) per family name; families without samples are
absent."""


def _label_template(constant: Mapping[str, str], variable: Iterable[str]) -> str:
    """A ``str.format`` template of a sorted label set: constants inlined, variables as fields."""
    items = {name: escape_label_value(value) for name, value in constant.items()}
    items.update({name: "{" + name + "}" for name in variable})
    parts = []
    for name in sorted(items):
        value = items[name]
        if name in constant:
            value = value.replace("{", "{{").replace("}", "}}")
        parts.append(f'{name}="{value}"')
    return ",".join(parts)


def _cluster_label_text(cluster: str, labels: Mapping[str, str]) -> str:
    """The sorted, escaped label text of a C-family series of ``cluster``."""
    return _label_template({**labels, "cluster_name": cluster}, ()).format()


_P = ("topic", "partition")
_G = ("group",)
_GT = ("group", "topic")
_GPM = ("group", "topic", "partition", "member_host", "consumer_id", "client_id")
_GPM_FLAGS = (*_GPM, "compaction_detected", "data_loss_detected")
_FLAG = {True: "true", False: "false"}


def render_cluster(snapshot: ClusterSnapshot, granularity: Granularity) -> ClusterChunks:
    """Render one cluster's samples, family by family (pure; safe to run in a worker thread).

    Each family's lines are joined and encoded before the next family is built, so at most one
    family's line strings (a few MB at 20,000 rows) exist at a time next to the finished chunks.
    """
    constant = {**snapshot.labels, "cluster_name": snapshot.cluster}
    memo: dict[str, str] = {}
    chunks: dict[str, bytes] = {}

    def esc(value: str) -> str:
        escaped = memo.get(value)
        if escaped is None:
            escaped = memo[value] = escape_label_value(value)
        return escaped

    def emit(name: str, samples: Iterable[tuple[str, object]]) -> None:
        """One family from ``(labels, value)`` pairs; pairs whose value is None are left out."""
        chunk = "".join(
            f"{name}{{{labels}}} {value}\n" for labels, value in samples if value is not None
        ).encode()
        if chunk:
            chunks[name] = chunk

    def floats(value: float | None) -> str | None:
        return None if value is None else format_value(value)

    partitions = snapshot.partitions
    p_tmpl = _label_template(constant, _P)
    p_labels = [p_tmpl.format(topic=esc(po.topic), partition=po.partition) for po in partitions]
    by_partition = list(zip(p_labels, partitions, strict=True))
    emit("kafka_partition_latest_offset", ((labels, po.high) for labels, po in by_partition))
    emit("kafka_partition_earliest_offset", ((labels, po.low) for labels, po in by_partition))
    del p_labels, by_partition

    sampling = snapshot.timestamp_sampling
    if granularity == "partition":
        rows = snapshot.rows
        gpm_tmpl = _label_template(constant, _GPM)
        fields = [
            {
                "group": esc(row.group),
                "topic": esc(row.topic),
                "partition": row.partition,
                "member_host": esc(row.member_host),
                "consumer_id": esc(row.consumer_id),
                "client_id": esc(row.client_id),
            }
            for row in rows
        ]
        labelled = list(zip([gpm_tmpl.format_map(f) for f in fields], rows, strict=True))
        emit("kafka_consumergroup_group_offset", ((lb, row.committed) for lb, row in labelled))
        emit("kafka_consumergroup_group_lag", ((lb, row.lag) for lb, row in labelled))
        emit(
            "kafka_consumergroup_group_consumable_lag",
            ((lb, row.consumable_lag) for lb, row in labelled),
        )
        if sampling:
            flags_tmpl = _label_template(constant, _GPM_FLAGS)

            def flagged(f: Mapping[str, object], row: PartitionRow) -> str:
                return flags_tmpl.format(
                    **f,
                    compaction_detected=_FLAG[row.compaction_detected],
                    data_loss_detected=_FLAG[row.data_loss_detected],
                )

            emit(
                "kafka_consumergroup_group_lag_seconds",
                (
                    (flagged(f, row), format_value(row.lag_seconds))
                    for f, row in zip(fields, rows, strict=True)
                    if row.lag_seconds is not None
                ),
            )
        del fields
        emit(
            "kafka_consumergroup_group_messages_lost",
            ((lb, row.messages_lost) for lb, row in labelled),
        )
        emit(
            "kafka_consumergroup_group_retention_margin",
            ((lb, row.retention_margin) for lb, row in labelled),
        )
        emit(
            "kafka_consumergroup_group_lag_retention_ratio",
            ((lb, floats(row.lag_retention_ratio)) for lb, row in labelled),
        )
        del labelled

    groups = snapshot.groups
    g_tmpl = _label_template(constant, _G)
    gt_tmpl = _label_template(constant, _GT)
    g_labels = [g_tmpl.format(group=esc(summary.group)) for summary in groups]
    by_group = list(zip(g_labels, groups, strict=True))
    emit("kafka_consumergroup_group_max_lag", ((lb, gs.max_lag) for lb, gs in by_group))
    if sampling:
        emit(
            "kafka_consumergroup_group_max_lag_seconds",
            ((lb, floats(gs.max_lag_seconds)) for lb, gs in by_group),
        )
    emit("kafka_consumergroup_group_sum_lag", ((lb, gs.sum_lag) for lb, gs in by_group))
    emit(
        "kafka_consumergroup_group_topic_sum_lag",
        (
            (gt_tmpl.format(group=esc(gs.group), topic=esc(topic)), gs.topic_sum_lag[topic])
            for gs in groups
            for topic in sorted(gs.topic_sum_lag)
        ),
    )
    emit("kafka_consumergroup_group_state", ((lb, int(gs.state)) for lb, gs in by_group))
    del by_group, g_labels

    c_labels = _cluster_label_text(snapshot.cluster, snapshot.labels)
    cluster_values: dict[str, float] = {
        "kafka_consumergroup_poll_time_ms": snapshot.poll_time_ms,
        "kafka_lag_exporter_scrape_duration_seconds": snapshot.duration_seconds,
        "kafka_lag_exporter_last_update_timestamp_seconds": snapshot.observed_at,
        "kafka_lag_exporter_compaction_detected_total": snapshot.compaction_detected_count,
        "kafka_lag_exporter_data_loss_partitions_total": snapshot.data_loss_partition_count,
    }
    for name, value in cluster_values.items():
        emit(name, ((c_labels, format_value(value)),))

    return MappingProxyType(chunks)


def assemble(chunks_by_cluster: Mapping[str, ClusterChunks]) -> tuple[bytes, ...]:
    """The body's parts in order: each family's HELP/TYPE once, then its chunk of every cluster
    (in cluster-name order). The parts are the chunks themselves, never copies."""
    clusters = [chunks_by_cluster[name] for name in sorted(chunks_by_cluster)]
    out: list[bytes] = []
    for family, header in _HEADERS.items():
        parts = [chunks[family] for chunks in clusters if family in chunks]
        if parts:
            out.append(header)
            out.extend(parts)
    return tuple(out)


def render_snapshots(snapshots: Sequence[ClusterSnapshot], granularity: Granularity) -> str:
    """The compatibility families of ``snapshots`` in text format (for ``once``)."""
    parts = assemble({s.cluster: render_cluster(s, granularity) for s in snapshots})
    return b"".join(parts).decode()


@dataclass(frozen=True, slots=True)
class _Exposition:
    """The cached cluster body as ``parts`` (HELP/TYPE headers and references to the clusters'
    chunks, never a joined copy) and a gzip stream of it that is left open for the scrape-time
    tail: a copy of ``compressor`` finishes the stream, so a gzipped scrape compresses only the
    few kilobytes rendered per scrape and the response is one ordinary gzip member."""

    chunks: Mapping[str, ClusterChunks]
    parts: tuple[bytes, ...]
    gzip_prefix: bytes
    compressor: zlib._Compress


def _prepare(chunks: Mapping[str, ClusterChunks]) -> _Exposition:
    parts = assemble(chunks)
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    compressed = [compressor.compress(part) for part in parts]
    compressed.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return _Exposition(MappingProxyType(dict(chunks)), parts, b"".join(compressed), compressor)


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
            (name, f"{CLUSTER_UP_FAMILY}{{{_cluster_label_text(name, labels.get(name, {}))}}} ")
            for name in sorted(status.cluster_names)
        )
        self._exposition = _prepare({})
        self._gzipped: dict[bool, tuple[_Exposition, bytes, bytes]] = {}
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
            new[update.cluster] = render_cluster(update, self._granularity)
        elif isinstance(update, ClusterWithdrawn):
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
        text = (
            f"# HELP kafka_lag_exporter_up {UP_HELP}\n"
            f"# TYPE kafka_lag_exporter_up gauge\n"
            f"kafka_lag_exporter_up {1 if all(fresh.values()) else 0}\n"
        )
        if self._cluster_up_prefixes:
            text += (
                f"# HELP {CLUSTER_UP_FAMILY} {CLUSTER_UP_HELP}\n# TYPE {CLUSTER_UP_FAMILY} gauge\n"
            )
            text += "".join(
                f"{prefix}{1 if fresh[name] else 0}\n" for name, prefix in self._cluster_up_prefixes
            )
        return text.encode()

    def render(
        self, accept: str | None, accept_encoding: str | None
    ) -> tuple[bytes, str, str | None]:
        """``(body, content type, content encoding or None)`` for one scrape."""
        parts, content_type, encoding = self.render_parts(accept, accept_encoding)
        return b"".join(parts), content_type, encoding

    def render_parts(
        self, accept: str | None, accept_encoding: str | None
    ) -> tuple[Sequence[bytes], str, str | None]:
        """Like :meth:`render`, with the body as parts to write in order, so an uncompressed
        scrape never copies the (tens of MB) cached body."""
        openmetrics = wants_openmetrics(accept)
        tail = [self._health_part()]
        self_metrics = self._self_metrics.render(openmetrics)
        if openmetrics:
            self_metrics = self_metrics.removesuffix(b"# EOF\n")
        tail.append(self_metrics)
        if openmetrics:
            tail.append(b"# EOF\n")
        scrape_part = b"".join(tail)
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        exposition = self._exposition
        if wants_gzip(accept_encoding):
            # Scrapes between two changes (of the clusters' body, the self-metrics or a queue
            # depth) get the same bytes: finishing the gzip stream once serves all of them.
            cached = self._gzipped.get(openmetrics)
            if cached is None or cached[0] is not exposition or cached[1] != scrape_part:
                compressor = exposition.compressor.copy()
                gz_tail = compressor.compress(scrape_part) + compressor.flush()
                cached = (exposition, scrape_part, exposition.gzip_prefix + gz_tail)
                self._gzipped[openmetrics] = cached
            return (cached[2],), content_type, "gzip"
        return (*exposition.parts, scrape_part), content_type, None
