"""The election loop's state machine, driven by a fake provider on a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from klag_pipeline.events import CycleStarted
from klag_pipeline.leadership import (
    LeaderElector,
    LeadershipError,
    NotLeader,
    StandbyGate,
    resolve_identity,
)
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.pipeline.ticker import Ticker
from klag_pipeline.settings.schema import LeadershipSettings
from klag_pipeline.telemetry.self_metrics import SelfMetrics

SETTINGS = LeadershipSettings(
    enabled=True, provider="kafka", lease_duration=15.0, renew_deadline=10.0, retry_period=2.0
)
HANG = None
"""An ``answer`` that makes the round wait until the test calls :meth:`FakeProvider.finish`."""


@dataclass
class FakeProvider:
    """Answers every round with ``answer``: True/False, a LeadershipError to raise, or HANG."""

    answer: bool | LeadershipError | None = True
    kind: str = "fake"
    identity: str = "me"
    holder: str | None = None
    calls: list[float] = field(default_factory=list)
    cancelled: int = 0
    released: bool = False
    closed: bool = False
    hang_release: bool = False
    log: list[str] = field(default_factory=list)
    clock: FakeClock | None = None
    _pending: asyncio.Future[bool] | None = None

    async def acquire_or_renew(self) -> bool:
        assert self.clock is not None
        self.calls.append(self.clock.monotonic())
        answer = self.answer
        if answer is HANG:
            self._pending = asyncio.get_running_loop().create_future()
            try:
                return await self._pending
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if isinstance(answer, LeadershipError):
            raise answer
        return answer

    @property
    def pending(self) -> bool:
        """A round is waiting for :meth:`finish`."""
        return self._pending is not None and not self._pending.done()

    def finish(self, value: bool) -> None:
        assert self._pending is not None
        assert not self._pending.done()
        self._pending.set_result(value)

    async def release(self) -> None:
        self.log.append("release")
        if self.hang_release:
            await asyncio.get_running_loop().create_future()
        self.released = True

    async def close(self) -> None:
        self.log.append("close")
        self.closed = True


@dataclass
class Harness:
    clock: FakeClock
    provider: FakeProvider
    elector: LeaderElector
    registry: CollectorRegistry
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def settle(self) -> None:
        """Let the loop run until it waits on the clock: between rounds, or in a hung round."""
        for _ in range(1000):
            pending = self.provider.pending
            idle = self.elector.rounds == len(self.provider.calls) or pending
            if idle and self.clock.sleepers >= 1:
                return
            await asyncio.sleep(0)
        raise TimeoutError("the election loop did not settle")

    async def advance(self, seconds: float, step: float = 0.5) -> None:
        remaining = seconds
        while remaining > 1e-9:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta
            await self.settle()

    def errors(self) -> float:
        value = self.registry.get_sample_value(
            "klag_pipeline_leadership_errors_total", {"provider": "fake"}
        )
        return value or 0.0


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    clock = FakeClock()
    provider = FakeProvider(clock=clock)
    self_metrics = SelfMetrics()
    registry = self_metrics.registry

    async def elected() -> None:
        provider.log.append(f"elected@{clock.monotonic():g}")

    async def demoted() -> None:
        provider.log.append(f"demoted@{clock.monotonic():g}")

    elector = LeaderElector(
        provider,
        SETTINGS,
        clock=clock,
        on_elected=elected,
        on_demoted=demoted,
        metrics=self_metrics.leadership("fake"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(elector.run(stop))
    h = Harness(clock, provider, elector, registry, stop, task)
    await h.settle()
    yield h
    stop.set()
    async with asyncio.timeout(5):
        await asyncio.gather(task, return_exceptions=True)


async def test_a_successful_round_elects_once_and_renewals_keep_leadership(
    harness: Harness,
) -> None:
    assert harness.elector.is_leader
    await harness.advance(20)
    assert harness.provider.log == ["elected@0"]
    # One round per retry_period: t = 0, 2, 4, … 20.
    assert harness.provider.calls == [float(t) for t in range(0, 21, 2)]


async def test_failures_keep_leadership_until_the_renew_deadline_then_step_down(
    harness: Harness,
) -> None:
    harness.provider.answer = LeadershipError("connection refused")
    with capture_logs() as logs:
        await harness.advance(9.5)
        assert harness.elector.is_leader, "stepped down before the renew deadline"
        await harness.advance(0.5)
    # The last successful round started at t=0: the deadline is t=10 exactly.
    assert not harness.elector.is_leader
    assert harness.provider.log == ["elected@0", "demoted@10"]
    failures = [e for e in logs if e["event"] == "leadership_backend_failed"]
    assert [e["log_level"] for e in failures].count("warning") == 1, "logged once on transition"
    # Rounds at t = 2, 4, 6, 8, 10 failed and were each counted.
    assert harness.errors() == 5


async def test_a_round_that_hangs_steps_down_at_the_deadline_and_is_abandoned_later(
    harness: Harness,
) -> None:
    harness.provider.answer = HANG
    await harness.advance(9.5)
    assert harness.elector.is_leader
    assert harness.provider.calls == [0.0, 2.0]
    await harness.advance(0.5)
    assert not harness.elector.is_leader, "a round in flight must not extend leadership"
    # round_timeout defaults to 2 × lease_duration = 30 s after the round started (t=2).
    await harness.advance(21.5)
    assert harness.provider.cancelled == 0
    await harness.advance(0.5)
    assert harness.provider.cancelled == 1
    assert harness.errors() == 1


async def test_cancelling_the_loop_in_a_hung_round_cancels_the_round_and_leaves_no_task(
    harness: Harness,
) -> None:
    harness.provider.answer = HANG
    await harness.advance(2)
    assert harness.provider.pending
    harness.task.cancel()
    async with asyncio.timeout(5):
        await asyncio.gather(harness.task, return_exceptions=True)
    assert harness.provider.cancelled == 1
    assert harness.provider.log[-2:] == ["release", "close"]
    assert asyncio.all_tasks() == {asyncio.current_task()}, "a task outlived the election loop"


async def test_another_holder_demotes_at_the_next_round(harness: Harness) -> None:
    harness.provider.answer = False
    await harness.advance(2)
    assert not harness.elector.is_leader
    assert harness.provider.log == ["elected@0", "demoted@2"]
    harness.provider.answer = True
    await harness.advance(2)
    assert harness.provider.log == ["elected@0", "demoted@2", "elected@4"]


async def test_an_answer_older_than_the_renew_deadline_is_not_trusted(harness: Harness) -> None:
    harness.provider.answer = False
    await harness.advance(2)
    assert not harness.elector.is_leader
    harness.provider.answer = HANG
    await harness.advance(2)  # round at t=4 hangs
    await harness.advance(10)
    harness.provider.answer = True
    harness.provider.finish(True)  # answered at t=14 for a round started at t=4
    await harness.settle()
    # Not elected by the stale answer; the next round (at once: its slot is past) elects.
    assert harness.provider.calls[-1] == 14.0
    assert harness.provider.log == ["elected@0", "demoted@2", "elected@14"]


async def test_stop_steps_down_then_releases_then_closes(harness: Harness) -> None:
    harness.stop.set()
    async with asyncio.timeout(5):
        await harness.task
    assert harness.provider.log == ["elected@0", "demoted@0", "release", "close"]
    assert not harness.elector.is_leader


async def test_a_release_that_never_answers_is_bounded(harness: Harness) -> None:
    harness.provider.hang_release = True
    harness.stop.set()
    for _ in range(1000):
        if "release" in harness.provider.log and harness.clock.sleepers == 1:
            break
        await asyncio.sleep(0)
    assert not harness.task.done()
    harness.clock.advance(5.0)  # release_timeout
    async with asyncio.timeout(5):
        await harness.task
    assert harness.provider.closed
    assert not harness.provider.released


async def test_the_leader_gauge_follows_the_role(harness: Harness) -> None:
    def gauge() -> float | None:
        return harness.registry.get_sample_value("klag_pipeline_leader", {"provider": "fake"})

    assert gauge() == 1
    harness.provider.answer = False
    await harness.advance(2)
    assert gauge() == 0
    transitions = harness.registry.get_sample_value(
        "klag_pipeline_leadership_transitions_total", {"provider": "fake", "role": "standby"}
    )
    assert transitions == 1


def test_settings_without_margins_are_refused() -> None:
    async def nothing() -> None:
        return None

    bad = LeadershipSettings(lease_duration=5.0, renew_deadline=5.0, retry_period=1.0)
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElector(
            FakeProvider(), bad, clock=FakeClock(), on_elected=nothing, on_demoted=nothing
        )


async def test_the_standby_gate_drops_cycles_but_reports_the_attempt() -> None:
    leading = False
    skipped: list[int] = []

    class Stage:
        name = "discovery"

        async def process(self, event: int) -> str:
            return f"processed {event}"

    gate = StandbyGate(Stage(), lambda: leading, lambda: skipped.append(1))
    assert gate.name == "discovery"
    with pytest.raises(NotLeader):
        await gate.process(1)
    assert skipped == [1]
    leading = True
    assert await gate.process(2) == "processed 2"
    assert skipped == [1]


def test_identity_prefers_settings_then_pod_name_then_hostname() -> None:
    named = LeadershipSettings(identity="configured")
    assert resolve_identity(named, {"POD_NAME": "pod", "HOSTNAME": "host"}) == "configured"
    plain = LeadershipSettings()
    assert resolve_identity(plain, {"POD_NAME": "pod", "HOSTNAME": "host"}) == "pod"
    assert resolve_identity(plain, {"HOSTNAME": "host"}) == "host"
    first, second = resolve_identity(plain, {}), resolve_identity(plain, {})
    assert first.startswith("klag-pipeline-")
    assert first != second


# -- Ticker.kick ---------------------------------------------------------------------------------


async def _next(channel: Channel[CycleStarted]) -> CycleStarted:
    async with asyncio.timeout(5):
        return await channel.receive()


async def test_a_kick_starts_a_cycle_now_and_restarts_the_grid_from_it() -> None:
    clock = FakeClock()
    ticker = Ticker("c1", 10.0, clock)
    ticks: Channel[CycleStarted] = Channel(1, "ticks")
    task = asyncio.create_task(ticker.run(ticks))
    first = await _next(ticks)
    assert first.started_monotonic == 0.0
    await clock.wait_for_sleepers(1)
    clock.advance(3.0)
    ticker.kick()
    kicked = await _next(ticks)
    assert (kicked.cycle, kicked.started_monotonic) == (2, 3.0)
    await clock.wait_for_sleepers(1)
    clock.advance(9.0)  # t=12: the old grid's tick (t=10) is gone, the new one is at t=13
    await asyncio.sleep(0)
    assert ticks.qsize() == 0
    await clock.wait_for_sleepers(1)
    clock.advance(1.0)
    following = await _next(ticks)
    assert following.started_monotonic == 13.0
    assert ticker.skipped == 0
    ticker.stop()
    async with asyncio.timeout(5):
        await task


async def test_a_kick_before_the_first_tick_does_not_double_it() -> None:
    clock = FakeClock()
    ticker = Ticker("c1", 10.0, clock)
    ticker.kick()
    ticks: Channel[CycleStarted] = Channel(4, "ticks")
    task = asyncio.create_task(ticker.run(ticks))
    await clock.wait_for_sleepers(1)
    assert ticks.qsize() == 1
    ticker.stop()
    async with asyncio.timeout(5):
        await task
