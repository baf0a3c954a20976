"""Sharded mode's step in the collection chain (docs/scaling.md).

:class:`OwnedGroupsStage`, after the committed offsets, keeps only the groups this replica owns,
so the loss checks, timestamps, calculation and evaluation run for those alone. The topics the
other groups commit are kept aside (``other_topics``): this replica owns some of their
partitions' ``kafka_partition_*`` series, whoever owns the groups, so their watermarks are read
too. It reads the ownership current when the cycle reaches it; the publication narrows the
finished snapshot (partitions included) with the ownership current then
(:func:`klag_pipeline.sharding.ownership.restrict`), so a cycle that outlived a rebalance
publishes nothing it no longer owns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from klag_pipeline.events import OffsetsFetched
from klag_pipeline.sharding.ownership import Ownership

CurrentOwnership = Callable[[], Ownership]


class OwnedGroupsStage:
    name = "owned_groups"

    def __init__(self, current: CurrentOwnership) -> None:
        self._current = current

    async def process(self, event: OffsetsFetched) -> OffsetsFetched:
        ownership = self._current()
        cluster = event.cluster
        discovered = event.discovered
        owned = {group for group in discovered.groups if ownership.owns_group(cluster, group)}
        mine = {tp.topic for g in owned for tp in event.committed.get(g, {})}
        others = {
            tp.topic
            for group, offsets in event.committed.items()
            if group not in owned
            for tp in offsets
        }
        narrowed = replace(
            discovered,
            groups=MappingProxyType({g: d for g, d in discovered.groups.items() if g in owned}),
            uncertain=frozenset(
                g for g in discovered.uncertain if ownership.owns_group(cluster, g)
            ),
        )
        return replace(
            event,
            discovered=narrowed,
            committed=MappingProxyType({g: o for g, o in event.committed.items() if g in owned}),
            unanswered=event.unanswered & owned,
            other_topics=frozenset(others - mine),
        )
