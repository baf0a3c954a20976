"""Which series a replica exports: buckets of ``(cluster, group)`` and ``(cluster, partition)``.

Every consumer group of a cluster falls into one of ``buckets`` hash buckets, and so does every
topic-partition (for the ``kafka_partition_*`` families, which belong to no group). A replica
exports a group's series, and a partition's, exactly when it owns the bucket. The hash is CRC-32
of the UTF-8 key, the same on every replica and in every process (Python's ``hash`` is salted).

:func:`restrict` narrows a finished, evaluated snapshot to what a replica owns, at publication
(with the ownership current then) and when the assignment takes buckets away (the last
published snapshot, narrowed further). It runs after the evaluation on purpose: the evaluation's
estimated time lag of a row reads the high-watermark history of the row's partition, which may
belong to another replica's bucket.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from klag_pipeline.model import TopicPartition
from klag_pipeline.snapshot import ClusterSnapshot, flagged_counts


def group_bucket(group: str, buckets: int) -> int:
    return zlib.crc32(b"g\0" + group.encode()) % buckets


def partition_bucket(topic: str, partition: int, buckets: int) -> int:
    return zlib.crc32(f"p\0{topic}\0{partition}".encode()) % buckets


@dataclass(frozen=True, slots=True)
class Ownership:
    """The buckets one replica owns in one generation of the sharding group.

    ``units`` maps a cluster name to its owned bucket numbers; a cluster missing from it is
    owned not at all. ``members`` is the generation's member count (for self-metrics and logs).
    """

    generation: int
    buckets: int
    units: Mapping[str, frozenset[int]]
    members: int = 1

    def owned(self, cluster: str) -> frozenset[int]:
        return self.units.get(cluster, frozenset())

    def owns_group(self, cluster: str, group: str) -> bool:
        return group_bucket(group, self.buckets) in self.owned(cluster)


NOTHING = Ownership(generation=-1, buckets=1, units=MappingProxyType({}), members=0)
"""Before the first assignment, and after losing the coordinating cluster: nothing is owned."""


def restrict(snapshot: ClusterSnapshot, ownership: Ownership) -> ClusterSnapshot:
    """``snapshot`` with only the groups and partitions ``ownership`` owns.

    The cluster-level figures (cycle time, poll time, the compaction and data-loss counts) stay
    this replica's own: the counts are recomputed over the rows kept, so their sum over all
    replicas is the single-process count (docs/scaling.md)."""
    cluster = snapshot.cluster
    owned = ownership.owned(cluster)
    buckets = ownership.buckets

    def keeps(group: str) -> bool:
        return group_bucket(group, buckets) in owned

    rows = tuple(row for row in snapshot.rows if keeps(row.group))
    partitions = tuple(
        p for p in snapshot.partitions if partition_bucket(p.topic, p.partition, buckets) in owned
    )
    groups = tuple(g for g in snapshot.groups if keeps(g.group))
    health = snapshot.health
    if health is not None:
        # The produce rate of a partition is a P series (exported by the partition's owner) and
        # also a field of the JSON-lines record of every row on it (kept with the row); the
        # sinks export the P series only for the partitions in ``partitions``.
        kept_partitions = {TopicPartition(p.topic, p.partition) for p in partitions}
        kept_partitions.update(row.topic_partition for row in rows)
        health = dataclasses.replace(
            health,
            partitions=MappingProxyType(
                {key: value for key, value in health.partitions.items() if keeps(key[0])}
            ),
            topics=MappingProxyType(
                {key: value for key, value in health.topics.items() if keeps(key[0])}
            ),
            groups=MappingProxyType(
                {key: value for key, value in health.groups.items() if keeps(key)}
            ),
            produce_rates=MappingProxyType(
                {tp: rate for tp, rate in health.produce_rates.items() if tp in kept_partitions}
            ),
        )
    return dataclasses.replace(
        snapshot,
        rows=rows,
        partitions=partitions,
        groups=groups,
        health=health,
        **flagged_counts(rows),
        carried_rows=sum(1 for row in rows if row.carried),
    )
