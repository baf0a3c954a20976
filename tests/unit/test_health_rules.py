"""The status rule table of docs/health.md, with expectations worked out by hand."""

from __future__ import annotations

import math

import pytest

from klag_pipeline.health.model import Rates, Status
from klag_pipeline.health.rules import (
    Observation,
    Thresholds,
    catch_up_seconds,
    partition_status,
    rates,
    worst,
)

LIMITS = Thresholds(stalled_after=300.0, stopped_after=300.0)


def obs(*points: tuple[float, int, int]) -> list[Observation]:
    """(at, committed, high) → observations with lag = high − committed."""
    return [Observation(at, committed, high, high - committed) for at, committed, high in points]


def status(
    points: list[Observation],
    *,
    members: bool = True,
    commit_age: float = 0.0,
    seen_moving: bool = True,
) -> Status:
    return partition_status(
        points, members=members, commit_age=commit_age, seen_moving=seen_moving, thresholds=LIMITS
    )[0]


def test_rates_over_the_window() -> None:
    # 60 s apart: committed 100 → 700 (10/s), high 1000 → 1300 (5/s), lag 900 → 600 (−5/s).
    got = rates(obs((0, 100, 1000), (30, 400, 1100), (60, 700, 1300)))
    assert got == Rates(consume=10.0, produce=5.0, lag_velocity=-5.0)


def test_a_window_where_nothing_moved_has_zero_rates() -> None:
    # An idle row: known rates, all 0 (not unknown), and a catch-up time of "never" with lag.
    got = rates(obs((0, 100, 1000), (30, 100, 1000), (60, 100, 1000)))
    assert got == Rates(consume=0.0, produce=0.0, lag_velocity=0.0)
    assert catch_up_seconds(900, got) == math.inf


def test_one_observation_has_no_rates() -> None:
    assert rates(obs((0, 1, 2))) == Rates(None, None, None)


def test_catch_up_time() -> None:
    assert catch_up_seconds(600, Rates(10.0, 5.0, -5.0)) == 120.0  # 600 / (10 − 5)
    assert catch_up_seconds(0, Rates(None, None, None)) == 0.0
    never = catch_up_seconds(600, Rates(5.0, 5.0, 0.0))
    assert never is not None
    assert math.isinf(never)
    assert catch_up_seconds(600, Rates(None, None, None)) is None


def test_unknown_until_two_observations() -> None:
    assert status(obs((0, 5, 10))) is Status.UNKNOWN


def test_caught_up_on_an_idle_topic_is_ok_however_old_the_commit() -> None:
    # Burrow's false STALL: nothing produced, nothing to consume, commits a day old.
    idle = obs((0, 50, 50), (60, 50, 50), (120, 50, 50))
    assert status(idle, commit_age=86_400) is Status.OK
    assert status(idle, members=False, commit_age=86_400) is Status.OK


def test_reached_zero_once_then_stopped_is_stopped() -> None:
    # Burrow's false OK: lag was 0 at the start of the window, then the consumer left.
    points = obs((0, 100, 100), (60, 100, 160), (120, 100, 220))
    assert status(points, members=False, commit_age=120) is Status.STOPPED


def test_no_members_with_old_commits_is_stopped_even_on_a_quiet_topic() -> None:
    points = obs((0, 100, 150), (60, 100, 150))
    assert status(points, members=False, commit_age=301) is Status.STOPPED


def test_no_members_and_not_yet_known_is_unknown_not_ok() -> None:
    # Right after a start: the commit has not been seen moving and 60 s < stopped_after.
    points = obs((0, 100, 150), (60, 100, 150))
    assert status(points, members=False, commit_age=60, seen_moving=False) is Status.UNKNOWN


def test_batch_consumer_between_runs_is_ok() -> None:
    points = obs((0, 100, 150), (60, 100, 150))
    assert status(points, members=False, commit_age=60, seen_moving=True) is Status.OK


def test_members_present_commit_unmoved_with_lag_is_stalled() -> None:
    points = obs((0, 100, 150), (60, 100, 160), (120, 100, 170))
    assert status(points, commit_age=301) is Status.STALLED
    assert status(points, commit_age=299) is Status.LAGGING  # growing, not yet stalled


def test_quiet_topic_never_stalls_a_caught_up_group() -> None:
    points = obs((0, 100, 100), (600, 100, 100))
    assert status(points, commit_age=600) is Status.OK


def test_lag_growing_while_consuming_is_lagging() -> None:
    # Consumes 1/s, produced 2/s: lag 0 → 60 → 120.
    points = obs((0, 0, 0), (60, 60, 120), (120, 120, 240))
    assert status(points) is Status.LAGGING


def test_lag_shrinking_while_consuming_is_ok() -> None:
    points = obs((0, 0, 240), (60, 100, 260), (120, 200, 280))
    assert status(points) is Status.OK


def test_committed_offset_moving_back_is_rewound() -> None:
    points = obs((0, 500, 600), (60, 520, 600), (120, 10, 600))
    got, reason = partition_status(
        points, members=True, commit_age=0, seen_moving=True, thresholds=LIMITS
    )
    assert got is Status.REWOUND
    assert "520 to 10" in reason


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([Status.OK, Status.STALLED, Status.LAGGING], Status.STALLED),
        ([Status.UNKNOWN, Status.OK], Status.OK),
        ([Status.UNKNOWN, Status.UNKNOWN], Status.UNKNOWN),
        ([Status.REWOUND, Status.STOPPED], Status.STOPPED),
    ],
)
def test_a_group_is_as_bad_as_its_worst_known_partition(
    statuses: list[Status], expected: Status
) -> None:
    assert worst(statuses) is expected


def test_status_codes_are_the_documented_ones() -> None:
    # Exported numbers: changing one breaks every alert written against it.
    assert {s.name: s.value for s in Status} == {
        "UNKNOWN": -1,
        "OK": 0,
        "LAGGING": 1,
        "REWOUND": 2,
        "STALLED": 3,
        "STOPPED": 4,
    }


def test_a_spike_that_fell_back_is_not_lagging() -> None:
    # Lag 100, 300, 250, 50, 120 at t = 0..240: last > first, but the later half (t > 120:
    # 50, 120) is not above the earlier half (100, 300, 250).
    points = [
        Observation(60.0 * i, committed, committed + lag, lag)
        for i, (committed, lag) in enumerate([(0, 100), (10, 300), (20, 250), (30, 50), (40, 120)])
    ]
    assert status(points) is Status.OK


def test_a_live_consumers_wobble_is_not_lagging() -> None:
    # Caught up but for what is in flight: 3, 5, 2, 4, 5 — last > first, no trend.
    wobble = [
        Observation(30.0 * i, 100 * i, 100 * i + lag, lag) for i, lag in enumerate([3, 5, 2, 4, 5])
    ]
    assert status(wobble) is Status.OK


def test_falling_behind_through_a_wobble_is_lagging() -> None:
    # 100, 130, 125 | 170, 160, 210: the later half's least (160) is above the earlier's most (130).
    lags = [100, 130, 125, 170, 160, 210]
    rising = [Observation(30.0 * i, 100 * i, 100 * i + lag, lag) for i, lag in enumerate(lags)]
    assert status(rising) is Status.LAGGING


def test_a_commit_only_consumer_outside_group_management_is_judged_by_its_commits() -> None:
    # No members (Flink/Spark assign() and commit), commits moving, slower than the producer:
    # LAGGING, not STOPPED. Consumes 2/s, produced 6/s: lag 0 → 240 → 480.
    points = obs((0, 0, 0), (60, 120, 360), (120, 240, 720))
    assert status(points, members=False, commit_age=0) is Status.LAGGING
    # The same consumer gone (no commit in the window): STOPPED.
    gone = obs((0, 240, 720), (60, 240, 1080), (120, 240, 1440))
    assert status(gone, members=False, commit_age=120) is Status.STOPPED
