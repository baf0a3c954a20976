"""Estimated time lag end to end at unit level: a denied Fetch answer (TOPIC_AUTHORIZATION_FAILED)
becomes a snapshot marker, and the evaluator fills ``estimated_lag_seconds`` from the watermark
history in rate mode or for denied topics only. Expectations are worked out by hand.

The real-broker harness has no authorizer (no ACLs), so the denied path is tested here with the
broker's answer injected at the sampler's job level.
"""

from __future__ import annotations

import dataclasses

import pytest

from klag_pipeline.health.evaluator import Evaluator
from klag_pipeline.kafka.sampler.jobs import Job, PartitionData, advance
from klag_pipeline.model import Failure, TopicPartition, Watermarks
from klag_pipeline.settings.schema import TimestampSamplingSettings
from klag_pipeline.snapshot import ClusterSnapshot, PartitionRow
from tests.unit.test_health_evaluator import SETTINGS, health, row, snap
from tests.unit.test_lag import calculate, cycle, tp

TP = TopicPartition("t", 0)
RATE = TimestampSamplingSettings(mode="rate")


def estimate(snapshot: ClusterSnapshot, group: str = "g", topic: str = "t") -> float | None:
    return health(snapshot).partitions[(group, TopicPartition(topic, 0))].estimated_lag_seconds


def denied(at: float, rows: list[PartitionRow], topics: set[str]) -> ClusterSnapshot:
    return dataclasses.replace(snap(at, rows), time_lag_denied=frozenset(topics))


def exact(r: PartitionRow, seconds: float) -> PartitionRow:
    return r._replace(lag_seconds=seconds)


def answered(code: int) -> object:
    """What the sampler files for an offset whose Fetch answer carried ``code``."""
    step = advance(
        Job(TP, 5, 5),
        PartitionData(code, b"", (), False),
        read_at=5,
        cap=1 << 20,
        read_committed=False,
    )
    return step.result


def test_a_denied_fetch_answer_names_its_topic_and_marks_the_snapshot() -> None:
    denial = answered(29)
    assert denial == Failure(
        "timestamps",
        "t-0",
        "offset 5: TOPIC_AUTHORIZATION_FAILED (error code 29)",
        denied_topic="t",
    )
    # Any other code (here REQUEST_TIMED_OUT, a transient one) marks nothing.
    other = answered(7)
    assert isinstance(denial, Failure)
    assert isinstance(other, Failure)
    assert other.denied_topic is None

    sampled = cycle(committed={"g": {tp("t", 0): 5}}, watermarks={tp("t", 0): Watermarks(0, 9)})
    sampled = dataclasses.replace(
        sampled, failures=(denial, other, Failure("timestamps", "east", "timed out"))
    )
    snapshot = calculate(sampled)
    assert snapshot.time_lag_denied == frozenset({"t"})
    assert snapshot.rows[0].lag_seconds is None
    assert calculate(cycle(committed={}, watermarks={})).time_lag_denied == frozenset()


def test_rate_mode_interpolates_every_row_and_never_extrapolates() -> None:
    ev = Evaluator(SETTINGS, poll_interval=10.0, sampling=RATE)
    first = ev.evaluate(snap(0, [row("g", "t", 900, 1000)]))
    # One point: an offset below it is unknown, not "years".
    assert estimate(first) is None
    ev.evaluate(snap(10, [row("g", "t", 900, 1100)]))
    out = ev.evaluate(snap(20, [row("g", "t", 1050, 1200), row("h", "t", 1200, 1200)]))
    # Record 1050 was written when the high went 1050 -> 1051: 0 + 51/100 * 10 = 5.1 s.
    assert estimate(out) == pytest.approx(20 - 5.1)
    assert estimate(out, group="h") == 0.0  # caught up
    out = ev.evaluate(snap(30, [row("g", "t", 999, 1300)]))
    assert estimate(out) is None  # older than the oldest point (t=0, high 1000)


def test_rate_mode_with_time_lag_off_estimates_nothing() -> None:
    ev = Evaluator(SETTINGS, 10.0, TimestampSamplingSettings(mode="rate", enabled=False))
    ev.evaluate(snap(0, [row("g", "t", 1000, 1000)]))
    assert estimate(ev.evaluate(snap(10, [row("g", "t", 1000, 1100)]))) is None


def test_message_mode_estimates_only_lagging_rows_of_denied_topics() -> None:
    ev = Evaluator(SETTINGS, poll_interval=10.0)
    ev.evaluate(snap(0, [row("g", "t", 1000, 1000), row("g", "u", 0, 100)]))
    # Not denied yet: no history was kept, so nothing to estimate from.
    out = ev.evaluate(denied(10, [row("g", "t", 1000, 1100), row("g", "u", 50, 200)], {"t"}))
    assert estimate(out) is None
    assert estimate(out, topic="u") is None
    # A cycle without lag on t reports no denial (nothing was fetched; lag 0 is time lag 0
    # without a read): t stays tracked.
    ev.evaluate(snap(20, [exact(row("g", "t", 1200, 1200), 0.0), row("g", "u", 50, 300)]))
    out = ev.evaluate(denied(30, [row("g", "t", 1149, 1300), row("g", "u", 50, 400)], {"t"}))
    # Points (10, 1100), (20, 1200): record 1149 at 10 + 50/100 * 10 = 15 s.
    assert estimate(out) == pytest.approx(30 - 15.0)
    assert estimate(out, topic="u") is None  # never estimated: exact sampling was not denied


def test_an_exact_time_lag_ends_the_estimate_and_is_never_mixed() -> None:
    ev = Evaluator(SETTINGS, poll_interval=10.0)
    ev.evaluate(denied(0, [row("g", "t", 1000, 1000)], {"t"}))
    ev.evaluate(denied(10, [row("g", "t", 1000, 1100)], {"t"}))
    # Read granted again: the row has an exact value, so no estimate beside it, and the
    # topic's history is dropped (estimates restart only after a new denial).
    out = ev.evaluate(snap(20, [exact(row("g", "t", 1050, 1200), 12.0)]))
    assert estimate(out) is None
    out = ev.evaluate(denied(30, [row("g", "t", 1250, 1300)], {"t"}))
    assert estimate(out) is None  # one point (30, 1300): offset 1250 predates it
