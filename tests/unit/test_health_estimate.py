"""The high-watermark timeline behind the estimated time lag (health/estimate.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klag_pipeline.health.estimate import Timeline, Timelines
from klag_pipeline.model import TopicPartition

TP = TopicPartition("t", 0)


def timeline(points: list[tuple[float, int]], max_points: int = 100) -> Timeline:
    line = Timeline(max_points, max_age=1e9)
    for at, high in points:
        line.observe(at, high)
    return line


def test_produce_time_interpolates_between_the_bracketing_points() -> None:
    # 100 records written between t=10 and t=20: the record at offset 149 is the 50th of them
    # (high went 149 -> 150 at 10 + 50/100 * 10 = 15).
    line = timeline([(0.0, 50), (10.0, 100), (20.0, 200)])

    assert line.produce_time(149) == pytest.approx(15.0)
    assert line.produce_time(100) == pytest.approx(10.1)
    assert line.produce_time(199) == pytest.approx(20.0)
    assert line.produce_time(50) == pytest.approx(0.2)
    assert line.lag_seconds(149, now=20.0) == pytest.approx(5.0)


def test_offset_before_the_oldest_point_is_unknown_not_extrapolated() -> None:
    line = timeline([(0.0, 50), (10.0, 100)])

    assert line.produce_time(49) is None
    assert line.lag_seconds(0, now=1e9) is None


def test_offset_at_or_past_the_latest_high_has_no_lag() -> None:
    line = timeline([(0.0, 50), (10.0, 100)])

    assert line.lag_seconds(100, now=10.0) == 0.0
    assert line.lag_seconds(150, now=10.0) == 0.0


def test_flat_stretches_are_skipped_to_the_segment_holding_the_record() -> None:
    # Nothing written from t=10 to t=30; offset 100 was written between t=30 and t=40.
    line = timeline([(0.0, 0), (10.0, 100), (20.0, 100), (30.0, 100), (40.0, 110)])

    assert line.produce_time(100) == pytest.approx(31.0)
    assert line.produce_time(99) == pytest.approx(10.0)


def test_empty_timeline_knows_nothing() -> None:
    assert Timeline(2, 60.0).produce_time(0) is None


def test_when_full_every_other_point_goes_and_the_span_is_kept() -> None:
    line = timeline([(float(t), 10 * t) for t in range(5)], max_points=4)

    # Five points into four slots: 0, 2, 4 stay (newest kept, then every other).
    assert line.points() == [(0.0, 0), (2.0, 20), (4.0, 40)]
    line.observe(5.0, 50)
    line.observe(6.0, 60)
    # 0, 2, 4, 5, 6 is over the bound again: 0, 4, 6 (the oldest point survives: same span).
    assert line.points() == [(0.0, 0), (4.0, 40), (6.0, 60)]


def test_an_odd_bound_keeps_the_oldest_point_too() -> None:
    line = timeline([(float(t), t) for t in range(4)], max_points=3)

    # 0, 1, 2, 3 into three slots: the newest, every other before it (1) and the oldest.
    assert line.points() == [(0.0, 0), (1.0, 1), (3.0, 3)]


def test_points_older_than_max_age_are_dropped() -> None:
    line = Timeline(100, max_age=10.0)
    for at in (0.0, 5.0, 10.0, 15.0):
        line.observe(at, int(at))

    assert line.points() == [(5.0, 5), (10.0, 10), (15.0, 15)]


def test_a_falling_high_restarts_the_timeline_and_repeats_are_ignored() -> None:
    line = timeline([(0.0, 100), (10.0, 200)])
    line.observe(10.0, 250)  # same observation time: a carried snapshot
    assert line.points() == [(0.0, 100), (10.0, 200)]

    line.observe(20.0, 5)  # topic recreated
    assert line.points() == [(20.0, 5)]


def test_timelines_forget_partitions_a_snapshot_no_longer_has() -> None:
    other = TopicPartition("t", 1)
    lines = Timelines(10, 60.0)
    lines.observe(0.0, [(TP, 1), (other, 2)])
    lines.observe(1.0, [(TP, 3)])

    assert len(lines) == 1
    assert lines.get(other) is None
    line = lines.get(TP)
    assert line is not None
    assert line.points() == [(0.0, 1), (1.0, 3)]


def test_at_least_two_points_are_required() -> None:
    with pytest.raises(ValueError, match="two points"):
        Timeline(1, 60.0)


steps = st.lists(st.tuples(st.floats(0.1, 100.0), st.integers(0, 1000)), min_size=1, max_size=60)


@given(steps, st.integers(2, 16), st.integers(0, 70_000))
def test_bounded_and_monotonic_whatever_is_observed(
    increments: list[tuple[float, int]], max_points: int, offset: int
) -> None:
    line = Timeline(max_points, max_age=1e9)
    at, high = 0.0, 0
    for dt, dh in increments:
        at, high = at + dt, high + dh
        line.observe(at, high)
    points = line.points()

    assert len(points) <= max_points
    assert points[0][0] == increments[0][0]  # thinning never shortens the span
    assert points[-1] == (at, high)  # the newest observation is always kept
    produced = line.produce_time(offset)
    if produced is not None:
        assert points[0][0] <= produced <= at
        later = line.produce_time(offset + 1)
        # A later offset was never written earlier.
        assert later is not None
        assert later >= produced
    else:
        assert offset < points[0][1]
