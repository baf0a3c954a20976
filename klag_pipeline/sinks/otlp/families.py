"""The compatibility families of SPEC §4 as OpenTelemetry gauge observations (pure code).

Names, values and attributes are the Prometheus sink's, label for label: every label becomes a
string attribute (``partition="3"``, ``data_loss_detected="false"``, custom labels included), so
a collector's Prometheus exporter or a backend that maps OTLP back to Prometheus sees exactly the
series ``/metrics`` serves. Integer values stay integers (OTLP ``as_int``), the rest are doubles.
A series that ``/metrics`` leaves out (earliest offset unknown, time lag not sampled) is left out
here too. One divergence: the SDK drops non-finite measurements (with a warning per collection),
so a ``lag_retention_ratio`` of +Inf (empty retained window with lag) is not observed at all;
``messages_lost`` and ``retention_margin`` still show the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from opentelemetry.metrics import Observation

from klag_pipeline.settings.schema import Granularity
from klag_pipeline.sinks.prometheus import (
    CLUSTER_UP_FAMILY,
    CLUSTER_UP_HELP,
    FAMILY_HELP,
    UP_HELP,
)
from klag_pipeline.snapshot import ClusterSnapshot, PartitionRow

UP_FAMILY: Final = "kafka_lag_exporter_up"
HEALTH_FAMILIES: Final = frozenset({UP_FAMILY, CLUSTER_UP_FAMILY})
"""Read from the exporter's status when exported, not from snapshots."""

_FLAG: Final = {True: "true", False: "false"}

RowValue = Callable[[PartitionRow], int | float | None]

# The GPM families without the time-lag flags: value of a row, None = no series.
_GPM_VALUES: Final[Mapping[str, RowValue]] = MappingProxyType(
    {
        "kafka_consumergroup_group_offset": lambda r: r.committed,
        "kafka_consumergroup_group_lag": lambda r: r.lag,
        "kafka_consumergroup_group_consumable_lag": lambda r: r.consumable_lag,
        "kafka_consumergroup_group_messages_lost": lambda r: r.messages_lost,
        "kafka_consumergroup_group_retention_margin": lambda r: r.retention_margin,
        "kafka_consumergroup_group_lag_retention_ratio": lambda r: r.lag_retention_ratio,
    }
)
_LAG_SECONDS: Final = "kafka_consumergroup_group_lag_seconds"
GPM_FAMILIES: Final = frozenset({*_GPM_VALUES, _LAG_SECONDS})

_CLUSTER_VALUES: Final[Mapping[str, Callable[[ClusterSnapshot], int | float]]] = MappingProxyType(
    {
        "kafka_consumergroup_poll_time_ms": lambda s: s.poll_time_ms,
        "kafka_lag_exporter_scrape_duration_seconds": lambda s: s.duration_seconds,
        "kafka_lag_exporter_last_update_timestamp_seconds": lambda s: s.observed_at,
        "kafka_lag_exporter_compaction_detected_total": lambda s: s.compaction_detected_count,
        "kafka_lag_exporter_data_loss_partitions_total": lambda s: s.data_loss_partition_count,
    }
)


def family_descriptions(granularity: Granularity, *, with_up: bool) -> Mapping[str, str]:
    """Family name → description of every gauge the sink registers, in exposition order."""
    names = {
        name: help_text
        for name, help_text in FAMILY_HELP.items()
        if granularity == "partition" or name not in GPM_FAMILIES
    }
    if with_up:
        names[UP_FAMILY] = UP_HELP
        names[CLUSTER_UP_FAMILY] = CLUSTER_UP_HELP
    return MappingProxyType(names)


def cluster_up_observations(
    fresh: Mapping[str, bool], labels: Mapping[str, Mapping[str, str]]
) -> list[Observation]:
    """``klag_pipeline_cluster_up`` of every cluster, with the attributes ``/metrics`` gives it
    (``cluster_name`` and the cluster's custom labels)."""
    return [
        Observation(1 if up else 0, {**labels.get(name, {}), "cluster_name": name})
        for name, up in fresh.items()
    ]


def _cluster_attributes(snapshot: ClusterSnapshot) -> dict[str, str]:
    # Built-in labels win over custom ones; the settings loader rejects collisions anyway.
    return {**snapshot.labels, "cluster_name": snapshot.cluster}


def _gpm_attributes(base: Mapping[str, str], row: PartitionRow) -> dict[str, str]:
    return {
        **base,
        "group": row.group,
        "topic": row.topic,
        "partition": str(row.partition),
        "member_host": row.member_host,
        "consumer_id": row.consumer_id,
        "client_id": row.client_id,
    }


def _partition_offsets(family: str, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    base = _cluster_attributes(snapshot)
    latest = family == "kafka_partition_latest_offset"
    for po in snapshot.partitions:
        value = po.high if latest else po.low
        if value is not None:
            yield Observation(value, {**base, "topic": po.topic, "partition": str(po.partition)})


def _gpm(family: str, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    base = _cluster_attributes(snapshot)
    if family == _LAG_SECONDS:
        if not snapshot.timestamp_sampling:
            return
        for row in snapshot.rows:
            if row.lag_seconds is not None:
                attributes = _gpm_attributes(base, row)
                attributes["compaction_detected"] = _FLAG[row.compaction_detected]
                attributes["data_loss_detected"] = _FLAG[row.data_loss_detected]
                yield Observation(row.lag_seconds, attributes)
        return
    value_of = _GPM_VALUES[family]
    for row in snapshot.rows:
        value = value_of(row)
        if value is not None and math.isfinite(value):
            yield Observation(value, _gpm_attributes(base, row))


def _groups(family: str, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    base = _cluster_attributes(snapshot)
    for summary in snapshot.groups:
        attributes = {**base, "group": summary.group}
        if family == "kafka_consumergroup_group_max_lag":
            yield Observation(summary.max_lag, attributes)
        elif family == "kafka_consumergroup_group_max_lag_seconds":
            if snapshot.timestamp_sampling and summary.max_lag_seconds is not None:
                yield Observation(summary.max_lag_seconds, attributes)
        elif family == "kafka_consumergroup_group_sum_lag":
            yield Observation(summary.sum_lag, attributes)
        elif family == "kafka_consumergroup_group_state":
            yield Observation(int(summary.state), attributes)
        else:
            for topic in sorted(summary.topic_sum_lag):
                yield Observation(summary.topic_sum_lag[topic], {**attributes, "topic": topic})


def _cluster(family: str, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    yield Observation(_CLUSTER_VALUES[family](snapshot), _cluster_attributes(snapshot))


_OBSERVERS: Final[Mapping[str, Callable[[str, ClusterSnapshot], Iterator[Observation]]]] = (
    MappingProxyType(
        {
            "kafka_partition_latest_offset": _partition_offsets,
            "kafka_partition_earliest_offset": _partition_offsets,
            **dict.fromkeys(GPM_FAMILIES, _gpm),
            "kafka_consumergroup_group_max_lag": _groups,
            "kafka_consumergroup_group_max_lag_seconds": _groups,
            "kafka_consumergroup_group_sum_lag": _groups,
            "kafka_consumergroup_group_topic_sum_lag": _groups,
            "kafka_consumergroup_group_state": _groups,
            **dict.fromkeys(_CLUSTER_VALUES, _cluster),
        }
    )
)


def observe(family: str, snapshots: Iterable[ClusterSnapshot]) -> list[Observation]:
    """Every observation of one cluster family over ``snapshots`` (not the
    :data:`HEALTH_FAMILIES`, which come from the exporter's status)."""
    observer = _OBSERVERS[family]
    return [point for snapshot in snapshots for point in observer(family, snapshot)]


@dataclass(frozen=True, slots=True)
class SeriesKeys:
    """Identities of one snapshot's attribute sets, per label set.

    Every family of a label set has at most as many attribute sets as its label set has keys here
    (the GPM keys include the time-lag flags), which is what the cardinality budget counts.
    """

    partitions: frozenset[tuple[str, ...]]
    groups: frozenset[tuple[str, ...]]
    group_topics: frozenset[tuple[str, ...]]
    rows: frozenset[tuple[str, ...]]


def series_keys(snapshot: ClusterSnapshot, granularity: Granularity) -> SeriesKeys:
    cluster = snapshot.cluster
    rows: frozenset[tuple[str, ...]] = frozenset()
    if granularity == "partition":
        rows = frozenset(
            (
                cluster,
                r.group,
                r.topic,
                str(r.partition),
                r.member_host,
                r.consumer_id,
                r.client_id,
                _FLAG[r.compaction_detected],
                _FLAG[r.data_loss_detected],
            )
            for r in snapshot.rows
        )
    return SeriesKeys(
        partitions=frozenset((cluster, p.topic, str(p.partition)) for p in snapshot.partitions),
        groups=frozenset((cluster, g.group) for g in snapshot.groups),
        group_topics=frozenset(
            (cluster, g.group, topic) for g in snapshot.groups for topic in g.topic_sum_lag
        ),
        rows=rows,
    )


class CardinalityBudget:
    """Says when the sink must replace its MeterProvider to keep every series out of overflow.

    The SDK keeps an aggregation for every attribute set an asynchronous instrument has ever
    observed (it stops exporting a set that is no longer observed, but never forgets it) and folds
    any new set into one ``otel.metric.overflow=true`` point once ``limit`` sets are known.
    Consumer ids change with every consumer restart, so a provider that lived long enough would
    end up exporting overflow only. The budget counts the distinct sets the current provider can
    have seen; when a label set exceeds ``limit``, a new provider is built with a limit of twice
    the live series (at least ``floor``), so memory stays proportional to what is exported.
    """

    def __init__(self, floor: int) -> None:
        if floor < 1:
            raise ValueError(f"cardinality floor must be >= 1, got {floor}")
        self._floor = floor
        self.limit = floor
        self._seen: tuple[set[tuple[str, ...]], ...] = (set(), set(), set(), set())

    def admit(self, keys: SeriesKeys) -> bool:
        """Count the sets of a snapshot about to be observed; True when they would overflow."""
        for seen, new in zip(self._seen, _parts(keys), strict=True):
            seen |= new
        return any(len(seen) > self.limit for seen in self._seen)

    def reset(self, live: Iterable[SeriesKeys]) -> int:
        """Start over for a new provider that will observe ``live``; returns its limit."""
        seen: tuple[set[tuple[str, ...]], ...] = (set(), set(), set(), set())
        for keys in live:
            for bucket, part in zip(seen, _parts(keys), strict=True):
                bucket |= part
        self._seen = seen
        self.limit = max(self._floor, 2 * max(len(bucket) for bucket in seen))
        return self.limit


def _parts(keys: SeriesKeys) -> tuple[frozenset[tuple[str, ...]], ...]:
    return keys.partitions, keys.groups, keys.group_topics, keys.rows
