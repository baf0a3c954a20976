"""StatusBoard: freshness, up, readiness and liveness verdicts on a hand-driven clock."""

from __future__ import annotations

import pytest

from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.status import StatusBoard


def board(*clusters: str, clock: FakeClock) -> StatusBoard:
    return StatusBoard(
        clusters or ("a",), staleness_threshold=90.0, poll_interval=30.0, clock=clock
    )


def succeed(status: StatusBoard, cluster: str, duration: float = 0.5) -> None:
    status.cycle_attempted(cluster)
    status.cycle_succeeded(cluster, duration)


def test_fresh_until_the_staleness_threshold() -> None:
    clock = FakeClock()
    status = board("a", clock=clock)
    assert not status.is_fresh("a")
    assert not status.has_data("a")
    succeed(status, "a")
    assert status.is_fresh("a")
    clock.advance(90)
    assert status.is_fresh("a")
    clock.advance(0.001)
    assert not status.is_fresh("a")
    assert status.has_data("a")


def test_up_needs_every_cluster_fresh() -> None:
    clock = FakeClock()
    status = board("a", "b", clock=clock)
    assert not status.up()
    succeed(status, "a")
    assert not status.up()
    succeed(status, "b")
    assert status.up()
    clock.advance(60)
    succeed(status, "b")
    clock.advance(31)
    assert status.is_fresh("b")
    assert not status.up()


def test_fresh_by_cluster_in_configuration_order() -> None:
    clock = FakeClock()
    status = board("b", "a", clock=clock)
    assert list(status.fresh_by_cluster().items()) == [("b", False), ("a", False)]
    succeed(status, "a")
    assert status.fresh_by_cluster() == {"b": False, "a": True}
    status.cycle_failed("a", "boom")  # a failure alone does not make data stale
    assert status.fresh_by_cluster() == {"b": False, "a": True}
    clock.advance(90.001)
    succeed(status, "b")
    assert status.fresh_by_cluster() == {"b": True, "a": False}
    assert status.up() is all(status.fresh_by_cluster().values())


def test_ready_reasons() -> None:
    clock = FakeClock()
    status = board("a", "b", clock=clock)
    assert status.ready() == (False, "no data yet")
    succeed(status, "a")
    assert status.ready() == (True, "ok")
    status.set_leader(False)
    assert status.ready() == (False, "standby")
    assert not status.is_leader
    status.set_leader(True)
    clock.advance(91)
    assert status.ready() == (False, "all clusters stale")
    succeed(status, "b")
    assert status.ready() == (True, "ok")


def test_healthy_until_a_loop_goes_silent() -> None:
    clock = FakeClock()
    status = board("a", "b", clock=clock)
    # The liveness window counts from start-up until the first attempt.
    clock.advance(90)
    assert status.healthy() == (True, "ok")
    status.cycle_attempted("a")
    clock.advance(1)
    ok, reason = status.healthy()
    assert not ok
    assert reason == "cluster b: no collection attempt for 91s"
    status.cycle_attempted("b")
    assert status.healthy() == (True, "ok")
    # Failing cycles still prove the loop is alive: liveness is about attempts, not success.
    for _ in range(5):
        clock.advance(30)
        for name in ("a", "b"):
            status.cycle_attempted(name)
            status.cycle_failed(name, "broker unreachable")
    assert status.healthy() == (True, "ok")


def test_a_dead_loop_is_unhealthy() -> None:
    clock = FakeClock()
    status = board("a", "b", clock=clock)
    succeed(status, "a")
    status.loop_died("b", "RuntimeError: boom")
    assert status.healthy() == (False, "cluster b: collection loop died: RuntimeError: boom")
    assert status.snapshot()[1].state == "dead"


def test_snapshot_reports_each_cluster() -> None:
    clock = FakeClock(start_time=1_000.0)
    status = board("a", "b", "c", clock=clock)
    succeed(status, "a", 1.25)
    clock.advance(10)
    status.cycle_attempted("a")
    status.cycle_failed("a", "timeout")
    status.cycle_attempted("a")
    status.cycle_failed("a", "auth failed")
    status.cycle_attempted("b")
    status.cycle_failed("b", "unreachable")
    succeed(status, "c", 2.0)
    clock.advance(100)
    a, b, c = status.snapshot()
    assert (a.name, a.last_success_at, a.age_seconds, a.last_duration) == ("a", 1000.0, 110.0, 1.25)
    assert (a.last_error, a.consecutive_failures, a.cycles, a.successes) == ("auth failed", 2, 3, 1)
    assert (a.fresh, a.state) == (False, "failing")
    assert (b.last_success_at, b.age_seconds, b.state, b.cycles) == (None, None, "failing", 1)
    assert (c.last_success_at, c.age_seconds, c.state) == (1010.0, 100.0, "stale")
    succeed(status, "a")
    a = status.snapshot()[0]
    assert (a.last_error, a.consecutive_failures, a.state) == (None, 0, "ok")
    assert board("x", clock=clock).snapshot()[0].state == "pending"


def test_identity_and_leadership_defaults() -> None:
    status = StatusBoard(
        ["a"], staleness_threshold=1, poll_interval=1, clock=FakeClock(), identity="pod-1"
    )
    assert (status.identity, status.is_leader) == ("pod-1", True)


def test_unknown_cluster_is_a_programming_error() -> None:
    status = board("a", clock=FakeClock())
    with pytest.raises(KeyError, match="unknown cluster 'nope'"):
        status.cycle_attempted("nope")
    with pytest.raises(ValueError, match="duplicate"):
        StatusBoard(["a", "a"], staleness_threshold=1, poll_interval=1, clock=FakeClock())


def test_early_offsets_make_a_cluster_fresh_without_counting_a_cycle() -> None:
    """A first cycle's partial snapshot in /metrics (docs/pipeline.md, "The first scrape"):
    ready and up, stale after the threshold like any data, but no success or duration."""
    clock = FakeClock()
    status = board("a", clock=clock)
    status.cycle_attempted("a")
    assert status.ready() == (False, "no data yet")
    status.offsets_published("a")
    assert status.ready() == (True, "ok")
    assert status.up()
    assert status.is_fresh("a")
    assert status.has_data("a")
    (view,) = status.snapshot()
    assert (view.successes, view.last_success_at, view.last_duration) == (0, None, None)
    assert view.state == "pending"
    clock.advance(90.001)
    assert not status.is_fresh("a")
    assert status.has_data("a")
    assert status.ready() == (False, "all clusters stale")
    succeed(status, "a")
    (view,) = status.snapshot()
    assert view.successes == 1
    assert view.state == "ok"
