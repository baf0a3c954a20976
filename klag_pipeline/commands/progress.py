"""One short job per cluster, for ``once`` and ``check --connect``.

A cluster that accepts connections and never answers must not make a command sit silent and then
print something false. So each cluster's client is wrapped to know which step it is in (connect,
list groups, describe, offsets, watermarks, timestamps, overview) and which brokers it awaits; a
line on stderr says so while a step waits; at the deadline the unfinished clusters are cancelled
and reported as "no answer from broker B within T (step: S)"; Ctrl-C cancels the same way, and a
second Ctrl-C ends the process at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import structlog

from klag_pipeline.commands import EXIT_INTERRUPTED
from klag_pipeline.errors import KlagError
from klag_pipeline.kafka.port import (
    ClusterClient,
    ClusterOverview,
    CommittedOffsets,
    GroupDescriptions,
    GroupListing,
    TimestampListing,
    WatermarkListing,
)
from klag_pipeline.model import ListedGroup, TopicPartition
from klag_pipeline.settings.durations import format_duration
from klag_pipeline.settings.schema import ClusterSettings

log = structlog.get_logger("klag_pipeline")

T = TypeVar("T")

# The first "still waiting" line after this long, then one every PROGRESS_EVERY per cluster still
# waiting: quiet for a healthy cluster (a cycle takes well under a second), never a flood.
PROGRESS_FIRST = 1.0
PROGRESS_EVERY = 2.0
# Closing a client whose broker hangs must not hang the command in turn.
CLOSE_TIMEOUT = 5.0


@runtime_checkable
class ShowsWaits(Protocol):
    """A client that can say which brokers it awaits an answer from (the aiokafka adapter)."""

    def waiting_on(self) -> tuple[str, ...]: ...


class TrackedClient:
    """A :class:`ClusterClient` that remembers the step it is in and since when."""

    def __init__(self, client: ClusterClient) -> None:
        self.inner = client
        self.step = "start"
        self.step_started = time.monotonic()
        # False between the cycles of a ``--window`` run: waiting then is the plan, not a broker.
        self.busy = True
        self.resumed: float | None = None  # when the latest cycle after a rest began

    def _enter(self, step: str) -> None:
        self.step = step
        self.step_started = time.monotonic()
        if not self.busy:
            self.resumed = self.step_started
        self.busy = True

    def rest(self, what: str) -> None:
        """Between two cycles: no "still waiting" line until the next request."""
        self.step = what
        self.step_started = time.monotonic()
        self.busy = False

    def quiet(self, now: float) -> bool:
        """Nothing worth a "still waiting" line: resting, or a cycle that began under
        ``PROGRESS_FIRST`` ago (the same grace the first cycle gets)."""
        return not self.busy or (self.resumed is not None and now - self.resumed < PROGRESS_FIRST)

    def waiting_on(self) -> tuple[str, ...]:
        return self.inner.waiting_on() if isinstance(self.inner, ShowsWaits) else ()

    async def connect(self) -> None:
        self._enter("connect")
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def list_groups(self) -> GroupListing:
        self._enter("list groups")
        return await self.inner.list_groups()

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        self._enter("describe")
        return await self.inner.describe_groups(groups)

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        self._enter("offsets")
        return await self.inner.fetch_committed_offsets(groups)

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        self._enter("watermarks")
        return await self.inner.list_watermarks(topics)

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        self._enter("timestamps")
        return await self.inner.sample_timestamps(wanted)

    async def overview(self) -> ClusterOverview:
        self._enter("overview")
        return await self.inner.overview()


@dataclass(frozen=True, slots=True)
class ClusterFailure:
    """Why a cluster has no result: ``message`` is the whole outcome, step included."""

    cluster: str
    step: str
    message: str
    broker: str | None = None
    interrupted: bool = False

    def __str__(self) -> str:
        return self.message


class Interrupt:
    """SIGINT: the first cancels the command gracefully, the second exits at once with 130."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_signal_handler(signal.SIGINT)

    def _on_sigint(self) -> None:
        if self.event.is_set():
            # Cancelling is already under way and the user does not want to wait for it (a
            # close that hangs, say): nothing is left worth finishing.
            log.warning("interrupted_again", exit_code=EXIT_INTERRUPTED)
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        self.event.set()
        log.warning("interrupted", hint="cancelling; press Ctrl-C again to exit at once")


def no_answer(brokers: Sequence[str], time_limit: float) -> str:
    """``no answer from broker B within T``, naming the brokers awaited when they are known."""
    within = f"within {format_duration(time_limit)}"
    if len(brokers) == 1:
        return f"no answer from broker {brokers[0]} {within}"
    if brokers:
        return f"no answer from brokers {', '.join(brokers)} {within}"
    return f"no answer {within}"


def _no_answer(brokers: Sequence[str], time_limit: float, step: str) -> str:
    return f"{no_answer(brokers, time_limit)} (step: {step})"


async def run_per_cluster(
    clusters: Sequence[ClusterSettings],
    job: Callable[[ClusterSettings, TrackedClient], Awaitable[T]],
    make_client: Callable[[ClusterSettings], ClusterClient],
    *,
    command: str,
    time_limit: float,
    interrupt: asyncio.Event | None = None,
) -> list[T | ClusterFailure]:
    """Run ``job`` for every cluster concurrently; one result or failure per cluster, in order.

    A job that raises a :class:`KlagError` fails its cluster; anything else is a bug and is
    raised once every client is closed.
    """
    started = time.monotonic()
    clients = [TrackedClient(make_client(c)) for c in clusters]
    tasks = [
        asyncio.create_task(_as_coroutine(job(c, client)), name=f"{command}.{c.name}")
        for c, client in zip(clusters, clients, strict=True)
    ]
    helpers = [
        asyncio.create_task(
            _report_progress(command, clusters, clients, tasks, started), name="progress"
        ),
        asyncio.create_task((interrupt or asyncio.Event()).wait(), name="interrupt"),
    ]
    interrupted = helpers[1]
    try:
        pending: set[asyncio.Task[T]] = set(tasks)
        while pending and not interrupted.done():
            left = started + time_limit - time.monotonic()
            if left <= 0:
                break
            done, _ = await asyncio.wait(
                [*pending, interrupted], timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending.difference_update(done)
        # Read the steps and the awaited brokers before cancelling unwinds them.
        results = [
            _outcome(c, client, task, interrupted.done(), time_limit, started)
            for c, client, task in zip(clusters, clients, tasks, strict=True)
        ]
    finally:
        for task in (*tasks, *helpers):
            task.cancel()
        await asyncio.wait([*tasks, *helpers], timeout=CLOSE_TIMEOUT)
        closing = [asyncio.create_task(_close(client)) for client in clients]
        _, stuck = await asyncio.wait(closing, timeout=CLOSE_TIMEOUT)
        for task in stuck:
            task.cancel()
    return results


def _outcome(
    cluster: ClusterSettings,
    client: TrackedClient,
    task: asyncio.Task[T],
    interrupted: bool,
    time_limit: float,
    started: float,
) -> T | ClusterFailure:
    if task.done():
        error = task.exception()
        if error is None:
            return task.result()
        if not isinstance(error, KlagError):
            raise error
        return ClusterFailure(
            cluster.name,
            client.step,
            f"{error} (step: {client.step})",
            broker=getattr(error, "broker", None),
        )
    brokers = client.waiting_on()
    if interrupted:
        elapsed = format_duration(round(time.monotonic() - started, 1))
        return ClusterFailure(
            cluster.name,
            client.step,
            f"interrupted after {elapsed} (step: {client.step})",
            broker=", ".join(brokers) or None,
            interrupted=True,
        )
    return ClusterFailure(
        cluster.name,
        client.step,
        _no_answer(brokers, time_limit, client.step),
        broker=", ".join(brokers) or None,
    )


async def _report_progress(
    command: str,
    clusters: Sequence[ClusterSettings],
    clients: Sequence[TrackedClient],
    tasks: Sequence[asyncio.Task[Any]],
    started: float,
) -> None:
    await asyncio.sleep(PROGRESS_FIRST)
    while True:
        now = time.monotonic()
        for cluster, client, task in zip(clusters, clients, tasks, strict=True):
            if task.done() or client.quiet(now):
                continue
            log.info(
                "cluster_waiting",
                command=command,
                cluster=cluster.name,
                step=client.step,
                broker=", ".join(client.waiting_on()) or None,
                elapsed_seconds=round(now - started, 1),
                step_seconds=round(now - client.step_started, 1),
            )
        await asyncio.sleep(PROGRESS_EVERY)


async def _close(client: TrackedClient) -> None:
    try:
        await client.close()
    except KlagError as exc:
        log.debug("cluster_close_failed", error=exc)


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable
