"""Withdraw a cluster's series from every sink once its data is older than the threshold.

A cluster whose cycles keep failing would otherwise go on showing its last values as if they
were current. Once ``staleness_threshold`` has passed since its last successful cycle, a
:class:`ClusterWithdrawn` goes to the sinks (each removes that cluster's series); the next
successful cycle publishes again (:mod:`klag_pipeline.cluster_pipeline`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from klag_pipeline.cluster_pipeline import ClusterPipeline
from klag_pipeline.pipeline.channel import Channel, ChannelClosed
from klag_pipeline.snapshot import ClusterWithdrawn, SinkUpdate
from klag_pipeline.status import StatusBoard

log = structlog.get_logger("klag_pipeline")


async def watch_staleness(
    pipelines: Sequence[ClusterPipeline],
    status: StatusBoard,
    snapshots: Channel[SinkUpdate],
    *,
    staleness_threshold: float,
    poll_interval: float,
    stop: asyncio.Event,
) -> None:
    """Check every cluster a few times per threshold until ``stop`` is set."""
    period = max(0.1, min(poll_interval, staleness_threshold) / 4)
    while not stop.is_set():
        for pipeline in pipelines:
            name = pipeline.name
            if pipeline.withdrawn or status.is_fresh(name) or not status.has_data(name):
                continue
            pipeline.withdrawn = True
            log.warning(
                "cluster_stale",
                cluster=name,
                staleness_threshold=staleness_threshold,
                error=pipeline.log.last_error or None,
            )
            try:
                await snapshots.send(ClusterWithdrawn(name, "stale"))
            except ChannelClosed:
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=period)
