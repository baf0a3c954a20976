"""``klag-pipeline once``: one cycle of every cluster, printed to stdout.

Exit 0 when every cluster answered, 1 when any failed (the others are still printed, the failed
ones named on stderr), 130 after Ctrl-C.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

import structlog

from klag_pipeline.collection import collection_chain
from klag_pipeline.commands import DEFAULT_TIMEOUT, EXIT_INTERRUPTED
from klag_pipeline.commands.progress import (
    ClusterFailure,
    Interrupt,
    TrackedClient,
    run_per_cluster,
)
from klag_pipeline.events import CycleStarted
from klag_pipeline.kafka.factory import ClientFactory, default_client_factory
from klag_pipeline.pipeline.clock import SystemClock
from klag_pipeline.settings.schema import ClusterSettings, Settings
from klag_pipeline.snapshot import ClusterSnapshot
from klag_pipeline.telemetry.self_metrics import SelfMetrics

log = structlog.get_logger("klag_pipeline")


async def collect(
    settings: Settings,
    *,
    time_limit: float = DEFAULT_TIMEOUT,
    client_factory: ClientFactory = default_client_factory,
    interrupt: asyncio.Event | None = None,
) -> tuple[list[ClusterSnapshot], list[ClusterFailure]]:
    """One cycle for every cluster, concurrently, each bounded by ``time_limit``."""
    self_metrics = SelfMetrics()
    clock = SystemClock()
    exporter = settings.exporter

    async def cycle(cluster: ClusterSettings, client: TrackedClient) -> ClusterSnapshot:
        chain = collection_chain(client, cluster, exporter, clock, long_running=False)
        return await chain.process(CycleStarted(cluster.name, 1, clock.time(), clock.monotonic()))

    results = await run_per_cluster(
        settings.clusters,
        cycle,
        lambda c: client_factory(c, exporter, self_metrics.for_cluster(c.name)),
        command="once",
        time_limit=time_limit,
        interrupt=interrupt,
    )
    snapshots = [r for r in results if isinstance(r, ClusterSnapshot)]
    failures = [r for r in results if isinstance(r, ClusterFailure)]
    return snapshots, failures


async def collect_once(
    settings: Settings,
    *,
    client_factory: ClientFactory = default_client_factory,
    time_limit: float = DEFAULT_TIMEOUT,
) -> tuple[list[ClusterSnapshot], list[tuple[str, str]]]:
    """:func:`collect` with each failure as a (cluster, message) pair."""
    snapshots, failures = await collect(
        settings, time_limit=time_limit, client_factory=client_factory
    )
    return snapshots, [(f.cluster, f.message) for f in failures]


async def _interruptible(
    settings: Settings, time_limit: float
) -> tuple[list[ClusterSnapshot], list[ClusterFailure], bool]:
    loop = asyncio.get_running_loop()
    interrupt = Interrupt()
    interrupt.install(loop)
    try:
        snapshots, failures = await collect(
            settings, time_limit=time_limit, interrupt=interrupt.event
        )
    finally:
        interrupt.remove(loop)
    return snapshots, failures, interrupt.event.is_set()


def once(
    settings: Settings, fmt: str, time_limit: float = DEFAULT_TIMEOUT, *, out: TextIO | None = None
) -> int:
    """Collect one cycle, print it in ``fmt`` and return the exit code."""
    from klag_pipeline.output import render_once

    stream = out or sys.stdout
    snapshots, failures, interrupted = asyncio.run(_interruptible(settings, time_limit))
    failed = [f.cluster for f in failures]
    stream.write(render_once(snapshots, settings, fmt, tty=stream.isatty(), failed=failed))
    stream.flush()
    for failure in failures:
        log.error(
            "cluster_cycle_failed",
            cluster=failure.cluster,
            step=failure.step,
            broker=failure.broker,
            error=failure.message,
        )
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if failures else 0
