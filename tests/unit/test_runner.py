"""The runner: stop callbacks first, a bounded wait, stragglers cancelled, bugs propagate."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from klag_pipeline.events import CycleStarted
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.pipeline.runner import Runner, install_signal_handlers
from klag_pipeline.pipeline.ticker import Ticker


async def test_returns_when_every_task_has_finished() -> None:
    finished: list[str] = []

    async def job(name: str) -> None:
        await asyncio.sleep(0)
        finished.append(name)

    runner = Runner(FakeClock())
    runner.add("a", lambda: job("a"))
    runner.add("b", lambda: job("b"))
    await asyncio.wait_for(runner.run(asyncio.Event(), shutdown_timeout=1.0), timeout=5)
    assert sorted(finished) == ["a", "b"]


async def test_stop_runs_callbacks_and_closing_flows_downstream() -> None:
    clock = FakeClock()
    ticker = Ticker("c", 10.0, clock)
    ticks = Channel[CycleStarted](1, "ticks")
    seen: list[int] = []
    order: list[str] = []

    async def consumer() -> None:
        async for event in ticks:
            seen.append(event.cycle)
        order.append("consumer drained")

    runner = Runner(clock)
    runner.add("ticker", lambda: ticker.run(ticks))
    runner.add("consumer", consumer)
    runner.on_stop(lambda: order.append("callback"))
    runner.on_stop(ticker.stop)
    stop = asyncio.Event()
    run = asyncio.create_task(runner.run(stop, shutdown_timeout=30.0))
    await clock.wait_for_sleepers(1)  # ticker asleep after cycle 1
    stop.set()
    await asyncio.wait_for(run, timeout=5)
    assert seen == [1]
    assert order == ["callback", "consumer drained"]
    assert clock.monotonic() == 0.0  # finished well inside the deadline, nothing waited on it


async def test_stragglers_are_cancelled_after_the_deadline() -> None:
    clock = FakeClock()
    polite_done = asyncio.Event()
    stopping = asyncio.Event()
    cancelled: list[str] = []

    async def polite() -> None:
        await stopping.wait()
        polite_done.set()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()  # ignores the stop callbacks entirely
        except asyncio.CancelledError:
            cancelled.append("stubborn")
            raise

    runner = Runner(clock)
    runner.add("polite", polite)
    runner.add("stubborn", stubborn)
    runner.on_stop(stopping.set)
    stop = asyncio.Event()
    run = asyncio.create_task(runner.run(stop, shutdown_timeout=5.0))
    stop.set()
    await asyncio.wait_for(polite_done.wait(), timeout=5)
    await clock.wait_for_sleepers(1)  # the runner waits on the shutdown deadline
    assert not run.done()
    assert cancelled == []

    clock.advance(4.9)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not run.done()  # still inside the deadline

    clock.advance(0.1)
    await asyncio.wait_for(run, timeout=5)
    assert cancelled == ["stubborn"]


async def test_unexpected_exception_propagates_after_cancelling_the_others() -> None:
    cancelled = asyncio.Event()

    async def bystander() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def buggy() -> None:
        await asyncio.sleep(0)
        raise ZeroDivisionError("a bug")

    runner = Runner(FakeClock())
    runner.add("bystander", bystander)
    runner.add("buggy", buggy)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        await asyncio.wait_for(runner.run(asyncio.Event(), shutdown_timeout=1.0), timeout=5)
    assert cancelled.is_set()


async def test_several_failures_propagate_as_a_group() -> None:
    async def buggy(message: str) -> None:
        raise RuntimeError(message)

    runner = Runner(FakeClock())
    runner.add("one", lambda: buggy("one"))
    runner.add("two", lambda: buggy("two"))
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(runner.run(asyncio.Event(), shutdown_timeout=1.0), timeout=5)
    assert sorted(str(exc) for exc in caught.value.exceptions) == ["one", "two"]


async def test_cancelling_run_cancels_every_task_and_propagates() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = Runner(FakeClock())
    runner.add("forever", forever)
    run = asyncio.create_task(runner.run(asyncio.Event(), shutdown_timeout=1.0))
    for _ in range(10):
        await asyncio.sleep(0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert cancelled.is_set()


async def test_a_runner_runs_once() -> None:
    runner = Runner(FakeClock())
    await runner.run(asyncio.Event(), shutdown_timeout=1.0)
    with pytest.raises(RuntimeError):
        await runner.run(asyncio.Event(), shutdown_timeout=1.0)
    with pytest.raises(RuntimeError):
        runner.add("late", lambda: asyncio.sleep(0))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_sets_the_stop_event(signum: signal.Signals) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    install_signal_handlers(loop, stop)
    try:
        os.kill(os.getpid(), signum)
        await asyncio.wait_for(stop.wait(), timeout=5)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
