"""Broker pacing: broker pauses move the deadline of a running stage back, once per wall-clock
second however many brokers paused, by at most the cap; slowness that is not a pause still fails
the cycle on time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from klag_pipeline.events import CycleStarted
from klag_pipeline.kafka.adapter.fetch_sender import Throttles
from klag_pipeline.pacing import PacedObserver, PauseBoard
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.stages.loop import run_stage


class Now:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_pauses_after_the_start_count_up_to_the_cap() -> None:
    now = Now()
    board = PauseBoard(2.0, now, horizon=60)
    board.paused(0.8)  # 100.0 - 100.8
    now.t = 101.0
    board.paused(0.8)  # 101.0 - 101.8
    assert board.extension(since=99.0) == pytest.approx(1.6)
    assert board.extension(since=100.5) == pytest.approx(0.3 + 0.8)  # only what came after
    assert board.extension(since=102.0) == 0.0
    now.t = 102.0
    board.paused(0.8)
    assert board.extension(since=99.0) == 2.0  # 2.4 paused: the cap


def test_overlapping_pauses_of_several_brokers_count_once() -> None:
    now = Now()
    board = PauseBoard(10.0, now, horizon=60)
    for _ in range(3):
        board.paused(1.0)  # three brokers throttle at once
    now.t += 0.5
    board.paused(1.0)  # runs 0.5 s past the first three
    assert board.extension(since=0.0) == pytest.approx(1.5)


def test_pauses_older_than_the_horizon_are_forgotten() -> None:
    now = Now()
    board = PauseBoard(10.0, now, horizon=5)
    board.paused(1.0)
    now.t += 10
    board.paused(1.0)
    assert board.extension(since=0.0) == pytest.approx(1.0)


def test_the_observer_passes_requests_on_and_records_throttles() -> None:
    class Inner:
        def __init__(self) -> None:
            self.seen: list[tuple[object, ...]] = []

        def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
            self.seen.append((api, broker, outcome, seconds))

        def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
            self.seen.append((api, broker, throttle_ms))

    inner, now = Inner(), Now()
    board = PauseBoard(10.0, now, horizon=60)
    observer = PacedObserver(inner, board)
    observer.on_request("ListGroups", "1", "ok", 0.01)
    observer.on_throttle("ListGroups", "1", 700)
    assert inner.seen == [("ListGroups", "1", "ok", 0.01), ("ListGroups", "1", 700)]
    assert board.extension(since=0.0) == pytest.approx(0.7)


async def run_one(pause: float, work: float, cap: float) -> tuple[list[int], list[str]]:
    """One cycle, deadline 0.1 s away, whose stage starts a request (a task, as the adapter's
    are) that gets an answer asking for ``pause`` seconds and then takes ``work`` seconds."""
    loop = asyncio.get_running_loop()
    board = PauseBoard(cap, loop.time, horizon=60)
    began = loop.time()

    class Throttled:
        name = "throttled"

        async def process(self, event: CycleStarted) -> int:
            async def request() -> None:
                board.paused(pause)
                await asyncio.sleep(work)

            await asyncio.create_task(request())
            return event.cycle

    @contextmanager
    def watch(event: CycleStarted, scope: asyncio.Timeout) -> Iterator[None]:
        def move() -> None:
            scope.reschedule(began + 0.1 + board.extension(began))

        with board.watching(move):
            yield

    inbox: Channel[CycleStarted] = Channel(1, "in")
    outbox: Channel[int] = Channel(1, "out")
    failures: list[str] = []
    await inbox.send(CycleStarted("c1", 1, 1_700_000_000.0, began))
    inbox.close()
    await run_stage(
        Throttled(),
        inbox,
        outbox,
        deadline_of=lambda _: began + 0.1,
        on_failure=lambda *a: failures.append(str(a[3])),
        watch=watch,
    )
    return [item async for item in outbox], failures


async def test_a_broker_pause_moves_the_running_stages_deadline_back() -> None:
    # 0.4 s of work against a 0.1 s deadline: it fits only because the broker paused us 0.6 s.
    assert await run_one(pause=0.6, work=0.4, cap=1.0) == ([1], [])


async def test_the_deadline_moves_by_the_cap_at_most() -> None:
    # The broker asks for 5 s; the allowance is 0.2 s: the cycle fails at 0.3 s, not 5.
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await run_one(pause=5.0, work=5.0, cap=0.2) == (
        [],
        ["cycle exceeded poll_interval during throttled"],
    )
    assert loop.time() - began < 1.0


async def test_slowness_that_is_not_a_pause_still_fails_on_time() -> None:
    assert await run_one(pause=0.0, work=0.5, cap=5.0) == (
        [],
        ["cycle exceeded poll_interval during throttled"],
    )


async def test_a_throttle_announced_during_a_wait_extends_the_wait() -> None:
    """Two requests to one broker: the second waits out the first's throttle, and meanwhile an
    answer to a third announces a longer one; it must not go before that one ends either."""
    loop = asyncio.get_running_loop()
    throttles = Throttles()
    throttles.note_throttle(3, 100)
    waiting = asyncio.create_task(throttles.wait_throttle(3))
    await asyncio.sleep(0.05)
    throttles.note_throttle(3, 300)  # ends about 0.35 s from the start
    began = loop.time() - 0.05
    await waiting
    assert loop.time() - began >= 0.33
