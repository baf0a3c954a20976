"""``klag-pipeline once``: one cycle of every cluster, printed to stdout; with ``--window``,
cycles for that long through the evaluation stage and the last one printed with its health
(:mod:`klag_pipeline.commands.window`).

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
from klag_pipeline.commands.window import Plan, run_cycles
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
    window: float | None = None,
    command: str = "once",
) -> tuple[list[ClusterSnapshot], list[ClusterFailure]]:
    """One cycle for every cluster, concurrently, each bounded by ``time_limit``; with
    ``window``, cycles for that long (each bounded by ``time_limit``), the last one returned."""
    self_metrics = SelfMetrics()
    clock = SystemClock()
    exporter = settings.exporter

    async def cycle(cluster: ClusterSettings, client: TrackedClient) -> ClusterSnapshot:
        chain = collection_chain(client, cluster, exporter, clock, long_running=False)
        return await chain.process(CycleStarted(cluster.name, 1, clock.time(), clock.monotonic()))

    job = cycle
    overall = time_limit
    if window is not None:
        plan = Plan.of(window, exporter.poll_interval)
        evaluated = plan.exporter(exporter)
        log.info(
            "window_started",
            command=command,
            window_seconds=plan.window,
            cycles=plan.cycles,
            interval_seconds=round(plan.interval, 3),
        )

        async def cycles(cluster: ClusterSettings, client: TrackedClient) -> ClusterSnapshot:
            chain = collection_chain(
                client, cluster, evaluated, clock, long_running=True, evaluate=True
            )
            return await run_cycles(
                chain, cluster.name, client, plan, clock, cycle_timeout=time_limit, command=command
            )

        job = cycles
        # Only a backstop: every cycle is bounded by time_limit and the pauses end at the window.
        overall = plan.window + plan.cycles * time_limit

    results = await run_per_cluster(
        settings.clusters,
        job,
        lambda c: client_factory(c, exporter, self_metrics.for_cluster(c.name)),
        command=command,
        time_limit=overall,
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


async def interruptible(
    settings: Settings, time_limit: float, *, window: float | None = None, command: str = "once"
) -> tuple[list[ClusterSnapshot], list[ClusterFailure], bool]:
    """:func:`collect` under Ctrl-C handling; True last when the run was interrupted."""
    loop = asyncio.get_running_loop()
    interrupt = Interrupt()
    interrupt.install(loop)
    try:
        snapshots, failures = await collect(
            settings,
            time_limit=time_limit,
            interrupt=interrupt.event,
            window=window,
            command=command,
        )
    finally:
        interrupt.remove(loop)
    return snapshots, failures, interrupt.event.is_set()


def once(
    settings: Settings,
    fmt: str,
    time_limit: float = DEFAULT_TIMEOUT,
    window: float | None = None,
    *,
    out: TextIO | None = None,
) -> int:
    """Collect one cycle (or ``window`` of them), print it in ``fmt``, return the exit code."""
    from klag_pipeline.output import render_once

    stream = out or sys.stdout
    snapshots, failures, interrupted = asyncio.run(
        interruptible(settings, time_limit, window=window)
    )
    failed = [f.cluster for f in failures]
    stream.write(render_once(snapshots, settings, fmt, tty=stream.isatty(), failed=failed))
    stream.flush()
    log_failures(failures)
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if failures else 0


def log_failures(failures: list[ClusterFailure]) -> None:
    for failure in failures:
        log.error(
            "cluster_cycle_failed",
            cluster=failure.cluster,
            step=failure.step,
            broker=failure.broker,
            error=failure.message,
        )
