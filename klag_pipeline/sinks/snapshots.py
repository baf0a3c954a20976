"""The latest published snapshot of each cluster, for the JSON API and the ``/`` page.

A sink like the others: it sees exactly what ``/metrics`` shows, so a cluster withdrawn there
(stale, or this replica became a standby) disappears from the API and the page too. Requests read
:meth:`SnapshotStore.get` and never wait on Kafka or on the pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, PartitionRow, SinkUpdate


@dataclass(frozen=True, slots=True)
class ClusterEntry:
    """One cluster's snapshot with its rows indexed by group, built once per cycle so a request
    for one group does not scan every row of the cluster."""

    snapshot: ClusterSnapshot
    rows_by_group: Mapping[str, tuple[PartitionRow, ...]]
    views: dict[str, object] = field(default_factory=dict, compare=False)
    """Renderings of this snapshot made by the first request that needed them (the API's group
    list, the page's section), so later requests until the next cycle only reuse them."""

    @classmethod
    def of(cls, snapshot: ClusterSnapshot) -> ClusterEntry:
        index: dict[str, list[PartitionRow]] = {}
        for row in snapshot.rows:
            index.setdefault(row.group, []).append(row)
        return cls(snapshot, MappingProxyType({g: tuple(rows) for g, rows in index.items()}))


class SnapshotStore:
    """A sink keeping the latest :class:`ClusterEntry` per cluster (none before the first
    snapshot, none after a :class:`ClusterWithdrawn`)."""

    name = "snapshots"

    def __init__(self) -> None:
        # Replaced, never mutated: a reader holding the mapping sees one consistent state.
        self._entries: Mapping[str, ClusterEntry] = MappingProxyType({})

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        async for update in inbox:
            self.apply(update)

    def apply(self, update: SinkUpdate) -> None:
        """Apply one update synchronously (tests, and callers without an inbox)."""
        entries = dict(self._entries)
        if isinstance(update, ClusterSnapshot):
            entries[update.cluster] = ClusterEntry.of(update)
        elif isinstance(update, ClusterWithdrawn):
            entries.pop(update.cluster, None)
        self._entries = MappingProxyType(entries)

    def get(self, cluster: str) -> ClusterEntry | None:
        return self._entries.get(cluster)

    def entries(self) -> list[ClusterEntry]:
        """Every cluster with data, by name."""
        return [self._entries[name] for name in sorted(self._entries)]
