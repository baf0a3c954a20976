"""The ticker on a fake clock: immediate first tick, fixed cadence, skipped ticks, stop."""

from __future__ import annotations

import asyncio

import pytest

from klag_pipeline.events import CycleStarted
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.pipeline.ticker import Ticker

START = 1_700_000_000.0


async def receive(channel: Channel[CycleStarted]) -> CycleStarted:
    return await asyncio.wait_for(channel.receive(), timeout=5)


async def spin(iterations: int = 20) -> None:
    for _ in range(iterations):
        await asyncio.sleep(0)


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        Ticker("c", 0.0, FakeClock())


async def test_first_tick_is_immediate_then_on_cadence() -> None:
    clock = FakeClock(start_time=START)
    ticker = Ticker("east", 10.0, clock)
    out = Channel[CycleStarted](4, "ticks")
    async with asyncio.TaskGroup() as group:
        group.create_task(ticker.run(out))
        first = await receive(out)
        assert first == CycleStarted("east", 1, START, 0.0)

        await clock.wait_for_sleepers(1)
        clock.advance(9.999)
        await spin()
        assert out.qsize() == 0  # not due yet

        clock.advance(0.001)
        second = await receive(out)
        assert (second.cycle, second.started_monotonic, second.observed_at) == (
            2,
            10.0,
            START + 10.0,
        )

        await clock.wait_for_sleepers(1)
        clock.advance(10.0)
        assert (await receive(out)).cycle == 3
        ticker.stop()
    assert ticker.skipped == 0
    assert out.closed


async def test_cadence_does_not_drift_with_late_wakeups() -> None:
    clock = FakeClock()
    ticker = Ticker("c", 10.0, clock)
    out = Channel[CycleStarted](4, "ticks")
    async with asyncio.TaskGroup() as group:
        group.create_task(ticker.run(out))
        await receive(out)
        await clock.wait_for_sleepers(1)
        clock.advance(13.0)  # woken 3 s late: cycle 2 at 13, but cycle 3 still due at 20
        assert (await receive(out)).started_monotonic == 13.0
        await clock.wait_for_sleepers(1)
        clock.advance(7.0)
        assert (await receive(out)).started_monotonic == 20.0
        ticker.stop()
    assert ticker.skipped == 0


async def test_slow_consumer_skips_missed_ticks_without_burst() -> None:
    clock = FakeClock()
    ticker = Ticker("c", 10.0, clock)
    out = Channel[CycleStarted](1, "ticks")
    async with asyncio.TaskGroup() as group:
        group.create_task(ticker.run(out))
        await spin()
        assert out.qsize() == 1  # cycle 1 sent at t=0, nobody consumed it

        await clock.wait_for_sleepers(1)
        clock.advance(10.0)
        await spin()
        # Cycle 2 is waiting for space (downstream busy): the ticker is not sleeping.
        assert clock.sleepers == 0

        clock.advance(25.0)  # t=35: ticks at 20 and 30 come and go while the send is blocked
        assert (await receive(out)).cycle == 1
        second = await receive(out)  # the blocked cycle 2 gets through at t=35
        assert second.cycle == 2
        assert second.started_monotonic == 10.0

        await clock.wait_for_sleepers(1)
        assert ticker.skipped == 2
        assert out.qsize() == 0  # no burst of the missed ticks
        clock.advance(4.999)
        await spin()
        assert out.qsize() == 0
        clock.advance(0.001)  # t=40: the next tick on the grid
        third = await receive(out)
        assert (third.cycle, third.started_monotonic) == (3, 40.0)
        ticker.stop()


async def test_send_finishing_exactly_on_a_tick_does_not_skip_it() -> None:
    clock = FakeClock()
    ticker = Ticker("c", 10.0, clock)
    out = Channel[CycleStarted](1, "ticks")
    async with asyncio.TaskGroup() as group:
        group.create_task(ticker.run(out))
        await spin()
        await clock.wait_for_sleepers(1)
        clock.advance(10.0)
        await spin()  # cycle 2 blocked on the full channel
        clock.advance(10.0)  # t=20, exactly the next tick
        assert (await receive(out)).cycle == 1
        assert (await receive(out)).cycle == 2
        third = await receive(out)
        assert (third.cycle, third.started_monotonic) == (3, 20.0)
        ticker.stop()
    assert ticker.skipped == 0


async def test_stop_while_sleeping_returns_and_closes() -> None:
    clock = FakeClock()
    ticker = Ticker("c", 10.0, clock)
    out = Channel[CycleStarted](4, "ticks")
    task = asyncio.create_task(ticker.run(out))
    await receive(out)
    await clock.wait_for_sleepers(1)
    ticker.stop()
    await asyncio.wait_for(task, timeout=5)
    assert out.closed
    assert clock.sleepers == 0
    assert [event async for event in out] == []


async def test_stop_while_blocked_on_send_returns_promptly() -> None:
    clock = FakeClock()
    ticker = Ticker("c", 10.0, clock)
    out = Channel[CycleStarted](1, "ticks")
    task = asyncio.create_task(ticker.run(out))
    await spin()
    await clock.wait_for_sleepers(1)
    clock.advance(10.0)
    await spin()
    assert not task.done()  # blocked: cycle 1 was never taken
    ticker.stop()
    await asyncio.wait_for(task, timeout=5)
    # What was already sent is still delivered downstream, then the channel ends.
    assert [event.cycle async for event in out] == [1]


async def test_stop_before_run_emits_nothing() -> None:
    ticker = Ticker("c", 10.0, FakeClock())
    out = Channel[CycleStarted](1, "ticks")
    ticker.stop()
    await asyncio.wait_for(ticker.run(out), timeout=5)
    assert out.closed
    assert out.qsize() == 0


async def test_cancelled_run_closes_output() -> None:
    clock = FakeClock()
    ticker = Ticker("c", 10.0, clock)
    out = Channel[CycleStarted](4, "ticks")
    task = asyncio.create_task(ticker.run(out))
    await clock.wait_for_sleepers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out.closed
    assert clock.sleepers == 0


async def test_fake_clock_wait_for_sleepers_is_bounded() -> None:
    with pytest.raises(TimeoutError):
        await FakeClock().wait_for_sleepers(1, max_iterations=5)


def test_fake_clock_refuses_to_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(-1.0)
