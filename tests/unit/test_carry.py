"""carry_over: what is repeated from the last good cycle, what is dropped, and the aggregates.

Expected values are written out by hand from the scenario, not computed by the code under test.
"""

from __future__ import annotations

from types import MappingProxyType

from klag_pipeline.carry import EMPTY, CarryState, Unanswered, carry_over
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionOffsets, PartitionRow

P0, P1 = TopicPartition("orders", 0), TopicPartition("orders", 1)


def row(group: str, tp: TopicPartition, committed: int, high: int = 100) -> PartitionRow:
    lag = high - committed
    return PartitionRow(
        group=group,
        topic=tp.topic,
        partition=tp.partition,
        member_host="",
        consumer_id="",
        client_id="",
        committed=committed,
        low=0,
        high=high,
        lag=lag,
        lag_seconds=float(lag),
        compaction_detected=False,
        data_loss_detected=False,
        messages_lost=0,
        retention_margin=committed,
        lag_retention_ratio=float(lag),
    )


def summary(group: str, max_lag: int, sum_lag: int, seconds: float | None) -> GroupSummary:
    return GroupSummary(
        group=group,
        state=GroupState.STABLE,
        protocol_type="consumer",
        group_type="classic",
        member_count=1,
        max_lag=max_lag,
        max_lag_seconds=seconds,
        sum_lag=sum_lag,
        topic_sum_lag=MappingProxyType({"orders": sum_lag}),
    )


def snapshot(
    at: float,
    rows: tuple[PartitionRow, ...],
    groups: tuple[GroupSummary, ...],
    partitions: tuple[TopicPartition, ...] = (P0, P1),
) -> ClusterSnapshot:
    return ClusterSnapshot(
        cluster="c",
        labels=MappingProxyType({}),
        cycle=int(at),
        observed_at=at,
        started_at=at,
        duration_seconds=0.1,
        poll_time_ms=1.0,
        timestamp_sampling=True,
        partitions=tuple(PartitionOffsets(tp.topic, tp.partition, 0, 100) for tp in partitions),
        groups=groups,
        rows=rows,
        compaction_detected_count=0,
        data_loss_partition_count=0,
        error_count=0,
    )


NOTHING = Unanswered(frozenset(), frozenset(), MappingProxyType({}))
# Cycle 1 at t=10: group "a" lags 30 on p0 and 10 on p1, group "b" lags 5 on p0.
FIRST = snapshot(
    10.0,
    (row("a", P0, 70), row("a", P1, 90), row("b", P0, 95)),
    (summary("a", 30, 40, 30.0), summary("b", 5, 5, 5.0)),
)


def first_state() -> CarryState:
    _, state = carry_over(FIRST, EMPTY, NOTHING, max_age=30.0)
    return state


def test_a_cycle_that_read_everything_is_unchanged() -> None:
    result, _ = carry_over(FIRST, EMPTY, NOTHING, max_age=30.0)
    assert result is FIRST


def test_an_unanswered_group_repeats_its_rows_and_summary() -> None:
    # Cycle 2 at t=12: "a" got no answer (coordinator loading); "b" moved on to 99.
    second = snapshot(12.0, (row("b", P0, 99),), (summary("b", 1, 1, 1.0),))
    unanswered = Unanswered(frozenset({"a"}), frozenset(), MappingProxyType({"b": {P0: 99}}))

    result, _ = carry_over(second, first_state(), unanswered, max_age=30.0)

    assert [(r.group, r.partition, r.committed, r.carried) for r in result.rows] == [
        ("a", 0, 70, True),
        ("a", 1, 90, True),
        ("b", 0, 99, False),
    ]
    assert [(g.group, g.max_lag, g.sum_lag) for g in result.groups] == [("a", 30, 40), ("b", 1, 1)]
    assert (result.carried_rows, result.carried_groups) == (2, 1)


def test_a_described_group_without_offsets_keeps_its_lag_in_the_aggregates() -> None:
    # "a" was described (so it has a fresh, empty summary) but its OffsetFetch failed.
    second = snapshot(12.0, (row("b", P0, 95),), (summary("a", 0, 0, 0.0), summary("b", 5, 5, 5.0)))
    unanswered = Unanswered(frozenset({"a"}), frozenset(), MappingProxyType({"b": {P0: 95}}))

    result, _ = carry_over(second, first_state(), unanswered, max_age=30.0)

    a = next(g for g in result.groups if g.group == "a")
    assert (a.max_lag, a.sum_lag, a.max_lag_seconds) == (30, 40, 30.0)
    assert dict(a.topic_sum_lag) == {"orders": 40}
    assert result.carried_groups == 0  # its summary is this cycle's, with the carried rows


def test_a_partition_without_watermarks_keeps_its_row_and_its_offsets() -> None:
    # p1's leader moved: "a" answered both commits, but p1 has no watermarks this cycle.
    second = snapshot(12.0, (row("a", P0, 80),), (summary("a", 20, 20, 20.0),), partitions=(P0,))
    unanswered = Unanswered(frozenset(), frozenset({P1}), MappingProxyType({"a": {P0: 80, P1: 90}}))

    result, _ = carry_over(second, first_state(), unanswered, max_age=30.0)

    assert [(r.partition, r.committed, r.carried) for r in result.rows] == [
        (0, 80, False),
        (1, 90, True),
    ]
    (a,) = result.groups
    assert (a.max_lag, a.sum_lag) == (20, 30)  # 20 fresh on p0 + 10 repeated on p1
    assert [p.partition for p in result.partitions] == [0, 1]


def test_confirmed_disappearances_are_not_carried() -> None:
    # "b" is gone (its coordinator said so: not unanswered); "a" no longer commits p1.
    second = snapshot(12.0, (row("a", P0, 70),), (summary("a", 30, 30, 30.0),))
    unanswered = Unanswered(frozenset(), frozenset(), MappingProxyType({"a": {P0: 70}}))

    result, _ = carry_over(second, first_state(), unanswered, max_age=30.0)

    assert result is second


def test_carried_values_expire_after_max_age_from_when_they_were_read() -> None:
    unanswered = Unanswered(frozenset({"a", "b"}), frozenset(), MappingProxyType({}))
    state = first_state()
    at_40, state = carry_over(snapshot(40.0, (), ()), state, unanswered, max_age=30.0)
    assert at_40.carried_rows == 3  # read at 10, 30 s old: still within the bound
    at_41, _ = carry_over(snapshot(41.0, (), ()), state, unanswered, max_age=30.0)
    assert (at_41.rows, at_41.groups, at_41.carried_rows) == ((), (), 0)
