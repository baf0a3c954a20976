"""``klag-pipeline check --connect``: reach every cluster and report what it shows.

One report per cluster on stdout (``cluster X: OK`` with brokers, topics, groups and API versions,
or ``cluster X: FAILED: <why> (step: S)``). Exit 0 when every cluster answered, 1 otherwise, 130
after Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from klag_pipeline.commands import DEFAULT_TIMEOUT, EXIT_INTERRUPTED
from klag_pipeline.commands.progress import (
    ClusterFailure,
    Interrupt,
    TrackedClient,
    run_per_cluster,
)
from klag_pipeline.kafka.factory import ClientFactory, default_client_factory
from klag_pipeline.settings.schema import ClusterSettings, Settings
from klag_pipeline.telemetry.self_metrics import SelfMetrics


async def _report(cluster: ClusterSettings, client: TrackedClient) -> str:
    await client.connect()
    overview = await client.overview()
    brokers = ", ".join(f"{node}={host}:{port}" for node, host, port in overview.brokers)
    return (
        f"cluster {cluster.name}: OK\n"
        f"  cluster id: {overview.cluster_id}  controller: {overview.controller_id}\n"
        f"  brokers: {brokers}\n"
        f"  topics: {overview.topic_count}  partitions: {overview.partition_count}"
        f"  consumer groups: {overview.group_count}\n"
        f"  api versions: {json.dumps(dict(overview.api_versions), sort_keys=True)}"
    )


async def connect_all(
    settings: Settings,
    out: TextIO,
    *,
    time_limit: float = DEFAULT_TIMEOUT,
    client_factory: ClientFactory = default_client_factory,
    interrupt: asyncio.Event | None = None,
) -> int:
    """Reach every cluster, write one report each to ``out``; 0 when all answered, else 1."""
    self_metrics = SelfMetrics()
    reports = await run_per_cluster(
        settings.clusters,
        _report,
        lambda c: client_factory(c, settings.exporter, self_metrics),
        command="check",
        time_limit=time_limit,
        interrupt=interrupt,
    )
    for cluster, report in zip(settings.clusters, reports, strict=True):
        if isinstance(report, ClusterFailure):
            out.write(f"cluster {cluster.name}: FAILED: {report.message}\n")
        else:
            out.write(report + "\n")
    out.flush()
    return 1 if any(isinstance(r, ClusterFailure) for r in reports) else 0


async def _interruptible(
    settings: Settings, time_limit: float, out: TextIO, client_factory: ClientFactory
) -> int:
    loop = asyncio.get_running_loop()
    interrupt = Interrupt()
    interrupt.install(loop)
    try:
        code = await connect_all(
            settings,
            out,
            time_limit=time_limit,
            client_factory=client_factory,
            interrupt=interrupt.event,
        )
    finally:
        interrupt.remove(loop)
    return EXIT_INTERRUPTED if interrupt.event.is_set() else code


def check_connect(
    settings: Settings,
    time_limit: float = DEFAULT_TIMEOUT,
    *,
    out: TextIO | None = None,
    client_factory: ClientFactory = default_client_factory,
) -> int:
    """``check --connect``: connect to every cluster and print a report each; the exit code."""
    return asyncio.run(_interruptible(settings, time_limit, out or sys.stdout, client_factory))
