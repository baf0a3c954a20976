"""The compatibility families of SPEC §4 as OpenTelemetry gauge observations (pure code).

Names, descriptions, label sets and the snapshot field each family reads come from
:mod:`klag_pipeline.metrics_catalog`, as for the Prometheus sink, so values and attributes are the
Prometheus sink's, label for label: every label becomes a
string attribute (``partition="3"``, ``data_loss_detected="false"``, custom labels included), so
a collector's Prometheus exporter or a backend that maps OTLP back to Prometheus sees exactly the
series ``/metrics`` serves. Integer values stay integers (OTLP ``as_int``), the rest are doubles.
A series that ``/metrics`` leaves out (earliest offset unknown, time lag not sampled) is left out
here too. One divergence: the SDK drops non-finite measurements (with a warning per collection),
so a ``lag_retention_ratio`` of +Inf (empty retained window with lag) is not observed at all;
``messages_lost`` and ``retention_margin`` still show the loss. The same holds for a catch-up
time of +Inf (never at current rates): that series is absent, and a positive
``lag_velocity`` or the status says the consumer is falling behind.

The consumer health families (``CONSUMER_FAMILIES``) are observed from ``snapshot.health``
only when it is not None, with the attributes of the label set they share with a compatibility
family; statuses and the abandoned flag are integers. Their counter
(``kafka_consumergroup_group_rebalances_total``) is an observable counter: a monotonic,
cumulative sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Final

from opentelemetry.metrics import Observation

from klag_pipeline.metrics_catalog import (
    CLUSTER_FAMILIES,
    CONSUMER_FAMILIES,
    GPM_FLAGS,
    HEALTH_FAMILIES,
    Family,
    Source,
)
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import Granularity
from klag_pipeline.snapshot import ClusterSnapshot, PartitionRow

_FLAG: Final = {True: "true", False: "false"}


def family_descriptions(granularity: Granularity, *, with_up: bool) -> Mapping[str, str]:
    """Family name → description (its ``# HELP`` text) of every instrument the sink registers,
    in exposition order (the counters among them: :data:`COUNTER_NAMES`)."""
    names = {
        f.name: f.help
        for f in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)
        if granularity in f.granularities
    }
    if with_up:
        names.update((f.name, f.help) for f in HEALTH_FAMILIES)
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


def _number(value: float) -> float:
    """The group state and statuses are IntEnums, the abandoned flag a bool: observed as plain
    ints (``as_int``) like every count."""
    return int(value) if isinstance(value, int) else value


def _observable(value: float | None) -> bool:
    # None: no series (as on /metrics). Non-finite: the SDK would drop it with a warning per
    # collection; only lag_retention_ratio can be +Inf (see the module docstring).
    return value is not None and math.isfinite(value)


Observer = Callable[[Family, ClusterSnapshot], Iterator[Observation]]


def _partition_offsets(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    base = _cluster_attributes(snapshot)
    get = attrgetter(family.field)
    for po in snapshot.partitions:
        value = get(po)
        if _observable(value):
            yield Observation(value, {**base, "topic": po.topic, "partition": str(po.partition)})


def _rows(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    base = _cluster_attributes(snapshot)
    get = attrgetter(family.field)
    flags = family.labels == GPM_FLAGS
    for row in snapshot.rows:
        value = get(row)
        if _observable(value):
            attributes = _gpm_attributes(base, row)
            if flags:
                attributes["compaction_detected"] = _FLAG[row.compaction_detected]
                attributes["data_loss_detected"] = _FLAG[row.data_loss_detected]
            yield Observation(value, attributes)


def _groups(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    base = _cluster_attributes(snapshot)
    get = attrgetter(family.field)
    per_topic = "topic" in family.labels.names
    for summary in snapshot.groups:
        attributes = {**base, "group": summary.group}
        if per_topic:
            by_topic = get(summary)
            for topic in sorted(by_topic):
                yield Observation(by_topic[topic], {**attributes, "topic": topic})
        else:
            value = get(summary)
            if _observable(value):
                yield Observation(_number(value), attributes)


def _cluster(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    yield Observation(attrgetter(family.field)(snapshot), _cluster_attributes(snapshot))


def _produce_rates(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    if snapshot.health is None:
        return
    base = _cluster_attributes(snapshot)
    rates = snapshot.health.produce_rates
    for po in snapshot.partitions:
        value = rates.get(TopicPartition(po.topic, po.partition))
        if value is not None and _observable(value):
            yield Observation(value, {**base, "topic": po.topic, "partition": str(po.partition)})


def _partition_health(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    """Labelled by the row (GPM, like ``kafka_consumergroup_group_lag``); an evaluated row left
    out of the snapshot (drop_abandoned) has no member labels and no series, as on /metrics."""
    if snapshot.health is None:
        return
    base = _cluster_attributes(snapshot)
    get = attrgetter(family.field)
    by_row = snapshot.health.partitions
    for row in snapshot.rows:
        found = by_row.get((row.group, row.topic_partition))
        if found is not None and _observable(value := get(found)):
            yield Observation(_number(value), _gpm_attributes(base, row))


def _topic_health(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    if snapshot.health is None:
        return
    base = _cluster_attributes(snapshot)
    get = attrgetter(family.field)
    for (group, topic), found in sorted(snapshot.health.topics.items()):
        if _observable(value := get(found)):
            yield Observation(_number(value), {**base, "group": group, "topic": topic})


def _group_health(family: Family, snapshot: ClusterSnapshot) -> Iterator[Observation]:
    if snapshot.health is None:
        return
    base = _cluster_attributes(snapshot)
    get = attrgetter(family.field)
    for summary in snapshot.groups:
        found = snapshot.health.groups.get(summary.group)
        if found is not None and _observable(value := get(found)):
            yield Observation(_number(value), {**base, "group": summary.group})


_OBSERVERS: Final[Mapping[Source, Observer]] = MappingProxyType(
    {
        "partition": _partition_offsets,
        "row": _rows,
        "group": _groups,
        "cluster": _cluster,
        "produce_rate": _produce_rates,
        "partition_health": _partition_health,
        "topic_health": _topic_health,
        "group_health": _group_health,
    }
)
_FAMILIES: Final[Mapping[str, Family]] = MappingProxyType(
    {f.name: f for f in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)}
)
COUNTER_NAMES: Final = frozenset(f.name for f in _FAMILIES.values() if f.kind == "counter")
"""Families observed as a cumulative monotonic sum (an observable counter), not a gauge."""


def observe(family: str, snapshots: Iterable[ClusterSnapshot]) -> list[Observation]:
    """Every observation of one cluster family over ``snapshots`` (not the health families,
    which come from the exporter's status); none while a snapshot has no timestamp sampling and
    the family needs it."""
    entry = _FAMILIES[family]
    observer = _OBSERVERS[entry.source]
    return [
        point
        for snapshot in snapshots
        if snapshot.timestamp_sampling or not entry.needs_sampling
        for point in observer(entry, snapshot)
    ]


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
