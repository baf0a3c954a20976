"""The one place long-lived tasks are started, supervised and shut down."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from klag_pipeline.pipeline.clock import Clock, SystemClock

_log = structlog.get_logger(__name__)


class Runner:
    """Owns every long-lived task in one :class:`asyncio.TaskGroup`.

    Shutdown order: when ``stop`` is set, the ``on_stop`` callbacks run first (they stop the
    tickers, so closing flows downstream through the channels and every stage and sink finishes
    its work and returns); the runner waits up to ``shutdown_timeout`` for that, then cancels
    whatever is still running. A task that raises is a bug: the other tasks are cancelled and
    the exception propagates out of :meth:`run`.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._factories: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._stop_callbacks: list[Callable[[], None]] = []
        self._started = False

    def add(self, name: str, coro_factory: Callable[[], Awaitable[None]]) -> None:
        """Register a task; ``coro_factory`` is called once, when :meth:`run` starts."""
        if self._started:
            raise RuntimeError(f"cannot add task {name!r}: the runner has started")
        self._factories.append((name, coro_factory))

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Register a callback to call, in registration order, when a stop is requested."""
        self._stop_callbacks.append(callback)

    async def run(self, stop: asyncio.Event, shutdown_timeout: float) -> None:
        """Run every task until all have returned, or until ``stop`` is set and shutdown is done.

        A single unexpected exception is re-raised as itself; several as an ExceptionGroup.
        """
        if self._started:
            raise RuntimeError("a runner runs once")
        self._started = True
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {
                    group.create_task(_as_coroutine(factory), name=name)
                    for name, factory in self._factories
                }
                await self._supervise(group, tasks, stop, shutdown_timeout)
        except BaseExceptionGroup as failures:
            if len(failures.exceptions) == 1:
                raise failures.exceptions[0] from None
            raise

    async def _supervise(
        self,
        group: asyncio.TaskGroup,
        tasks: set[asyncio.Task[None]],
        stop: asyncio.Event,
        shutdown_timeout: float,
    ) -> None:
        stop_requested = group.create_task(stop.wait(), name="runner-stop-signal")
        pending = await _until_done_or(set(tasks), stop_requested)
        if not pending:
            return
        _log.info("shutdown_started", tasks=len(pending), timeout_seconds=shutdown_timeout)
        for callback in self._stop_callbacks:
            callback()
        deadline = group.create_task(
            self._clock.sleep_until(self._clock.monotonic() + shutdown_timeout),
            name="runner-shutdown-deadline",
        )
        pending = await _until_done_or(pending, deadline)
        if pending:
            _log.warning(
                "shutdown_deadline_exceeded",
                cancelled=sorted(task.get_name() for task in pending),
                timeout_seconds=shutdown_timeout,
            )
            for task in pending:
                task.cancel()


async def _as_coroutine(factory: Callable[[], Awaitable[None]]) -> None:
    # TaskGroup.create_task wants a coroutine; a factory may return any awaitable.
    await factory()


async def _until_done_or(
    pending: set[asyncio.Task[None]], sentinel: asyncio.Task[Any]
) -> set[asyncio.Task[None]]:
    """Wait until every task of ``pending`` is done or ``sentinel`` is; the tasks still running
    are returned and ``sentinel`` is cancelled on the way out."""
    try:
        while pending and not sentinel.done():
            done, _ = await asyncio.wait(pending | {sentinel}, return_when=asyncio.FIRST_COMPLETED)
            pending = pending - done
    finally:
        sentinel.cancel()
    return pending


def install_signal_handlers(loop: asyncio.AbstractEventLoop, stop_event: asyncio.Event) -> None:
    """Set ``stop_event`` on SIGTERM or SIGINT, so both shut down cleanly with exit status 0."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_event.set)
