"""A cluster's collection chain, typed end to end: ``CycleStarted`` → ``ClusterSnapshot``.

discovery → committed offsets → watermarks → timestamps → calculation (→ evaluation). Committed
offsets are read before watermarks so lag cannot go negative through a race (docs/pipeline.md). The
exporter wires this chain with channels; ``once`` runs it directly. A stage whose input is not the
previous stage's output does not type-check here (:class:`klag_pipeline.pipeline.chain.Chain`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from klag_pipeline.events import CycleStarted, OffsetsFetched, WatermarksListed
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.pipeline.chain import Chain
from klag_pipeline.pipeline.clock import TimeSource
from klag_pipeline.settings.schema import ClusterSettings, ExporterSettings
from klag_pipeline.snapshot import ClusterSnapshot
from klag_pipeline.stages.calculation import CalculationStage
from klag_pipeline.stages.committed_offsets import CommittedOffsetsStage
from klag_pipeline.stages.discovery import DiscoveryStage
from klag_pipeline.stages.early_offsets import EarlyOffsetsStage
from klag_pipeline.stages.evaluation import EvaluationStage
from klag_pipeline.stages.sharding import CurrentOwnership, OwnedGroupsStage
from klag_pipeline.stages.timestamps import CacheLookup, TimestampStage
from klag_pipeline.stages.watermarks import WatermarksStage

CollectionChain = Chain[CycleStarted, ClusterSnapshot]


def collection_chain(
    client: ClusterClient,
    cluster: ClusterSettings,
    exporter: ExporterSettings,
    clock: TimeSource,
    *,
    long_running: bool,
    evaluate: bool = False,
    on_cycle_start: Callable[[], None] | None = None,
    cache_lookup: CacheLookup | None = None,
    ownership: CurrentOwnership | None = None,
    early_offsets: Callable[[WatermarksListed], Awaitable[None]] | None = None,
) -> CollectionChain:
    """The five stages for one cluster.

    ``long_running``: the exporter's chain remembers across cycles for ``staleness_threshold``
    (vanished groups are asked about again, values a cycle could not read are carried); a
    one-shot chain (``once``) has no previous cycle to remember. ``evaluate``: end with the
    evaluation stage (when ``[exporter.health]`` is enabled), which needs several cycles.
    ``ownership``: sharded mode — collect only the groups this replica owns (the publication
    narrows the partitions, after the evaluation: docs/scaling.md). ``early_offsets``: offered
    every cycle's watermarks before its timestamp pass (the first scrape, docs/pipeline.md)."""
    remember_for = exporter.staleness_threshold if long_running else 0.0
    offsets: Chain[CycleStarted, OffsetsFetched] = Chain.of(
        DiscoveryStage(
            client,
            cluster,
            clock=clock,
            on_cycle_start=on_cycle_start,
            recheck_for=remember_for if long_running else math.inf,
        )
    ).then(CommittedOffsetsStage(client, cluster, clock=clock))
    if ownership is not None:
        offsets = offsets.then(OwnedGroupsStage(ownership))
    listed = offsets.then(WatermarksStage(client, clock=clock))
    if early_offsets is not None:
        listed = listed.then(EarlyOffsetsStage(early_offsets))
    chain = listed.then(
        TimestampStage(client, exporter.timestamp_sampling, cache_lookup=cache_lookup, clock=clock)
    ).then(CalculationStage(cluster, clock=clock, carry_for=remember_for))
    if evaluate and exporter.health.enabled:
        chain = chain.then(
            EvaluationStage(exporter.health, exporter.poll_interval, exporter.timestamp_sampling)
        )
    return chain
