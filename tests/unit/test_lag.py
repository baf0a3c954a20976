"""The pure calculations of SPEC §4–§5, table-driven plus Hypothesis properties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klag_pipeline import lag
from klag_pipeline.events import (
    CycleStarted,
    GroupsDiscovered,
    OffsetsFetched,
    TimestampsSampled,
    WatermarksListed,
)
from klag_pipeline.model import (
    Failure,
    GroupDescription,
    GroupMember,
    GroupState,
    TimestampSample,
    TopicPartition,
    Watermarks,
)
from klag_pipeline.snapshot import ClusterSnapshot, PartitionRow

NOW = 1_700_000_100.0
STARTED = 1_700_000_000.0
SAMPLED_AT = 1_700_000_002.0


def tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


def describe(
    group: str,
    members: tuple[GroupMember, ...] = (),
    state: GroupState = GroupState.STABLE,
) -> GroupDescription:
    return GroupDescription(
        group_id=group,
        state=state,
        protocol_type="consumer",
        group_type="classic",
        members=members,
        coordinator=1,
    )


def cycle(
    *,
    groups: Mapping[str, GroupDescription] | None = None,
    committed: Mapping[str, Mapping[TopicPartition, int]],
    watermarks: Mapping[TopicPartition, Watermarks],
    samples: Mapping[tuple[TopicPartition, int], TimestampSample] | None = None,
    enabled: bool = True,
    failures: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> TimestampsSampled:
    """The event chain of one cycle; groups default to a Stable, member-less description."""
    if groups is None:
        groups = {group: describe(group) for group in committed}

    def fail(stage: str, count: int) -> tuple[Failure, ...]:
        return tuple(Failure(stage, str(n), "boom") for n in range(count))

    start = CycleStarted("east", 7, STARTED, 100.0)
    discovered = GroupsDiscovered(
        start, MappingProxyType(dict(groups)), fail("discovery", failures[0]), 0.1, STARTED + 0.1
    )
    fetched = OffsetsFetched(
        discovered,
        MappingProxyType({g: MappingProxyType(dict(o)) for g, o in committed.items()}),
        fail("committed_offsets", failures[1]),
        0.1,
        STARTED + 0.2,
    )
    listed = WatermarksListed(
        fetched,
        MappingProxyType(dict(watermarks)),
        frozenset(),
        fail("watermarks", failures[2]),
        0.1,
        STARTED + 0.3,
    )
    return TimestampsSampled(
        listed,
        MappingProxyType(dict(samples or {})),
        enabled,
        fail("timestamps", failures[3]),
        0.1,
        SAMPLED_AT,
    )


def calculate(sampled: TimestampsSampled) -> ClusterSnapshot:
    return lag.calculate(
        sampled,
        labels={"env": "prod", "dc": "x"},
        now=NOW,
        duration_seconds=1.5,
        poll_time_ms=400.0,
    )


def one_row(
    committed: int,
    low: int | None,
    high: int,
    sample: TimestampSample | None = None,
    *,
    enabled: bool = True,
) -> PartitionRow:
    part = tp("t", 0)
    snapshot = calculate(
        cycle(
            committed={"g": {part: committed}},
            watermarks={part: Watermarks(low, high)},
            samples={(part, committed): sample} if sample is not None else {},
            enabled=enabled,
        )
    )
    (row,) = snapshot.rows
    return row


# ------------------------------------------------------------------------ offset and loss figures

INF = math.inf


@pytest.mark.parametrize(
    ("committed", "low", "high", "lag_", "lost", "margin", "ratio", "loss"),
    [
        # caught up
        (100, 0, 100, 0, 0, 100, 0.0, False),
        # lagging inside the window: 25 of 100 retained messages unread
        (75, 0, 100, 25, 0, 75, 25.0, False),
        # committed exactly at the log start: nothing lost yet, whole window unread
        (50, 50, 100, 50, 0, 0, 100.0, False),
        # retention overtook the group: 10 lost, ratio beyond 100
        (40, 50, 100, 60, 10, -10, 120.0, True),
        # empty window (everything deleted) while lagging: infinite ratio
        (40, 100, 100, 60, 60, -60, INF, True),
        # empty window and caught up: ratio 0, no loss
        (100, 100, 100, 0, 0, 0, 0.0, False),
        # committed above high (a race the stage order prevents): clamped to 0
        (110, 0, 100, 0, 0, 110, 0.0, False),
        # empty topic, commit at 0
        (0, 0, 0, 0, 0, 0, 0.0, False),
    ],
)
def test_offset_and_retention_figures(
    committed: int,
    low: int,
    high: int,
    lag_: int,
    lost: int,
    margin: int,
    ratio: float,
    loss: bool,
) -> None:
    row = one_row(committed, low, high)
    assert (row.committed, row.low, row.high) == (committed, low, high)
    assert row.lag == lag_
    assert row.messages_lost == lost
    assert row.retention_margin == margin
    assert row.lag_retention_ratio == ratio
    assert row.data_loss_detected is loss


@pytest.mark.parametrize(("committed", "high"), [(40, 100), (100, 100), (200, 100)])
def test_unknown_low_says_nothing_about_loss(committed: int, high: int) -> None:
    row = one_row(committed, None, high)
    assert row.lag == max(high - committed, 0)
    assert (row.messages_lost, row.retention_margin, row.lag_retention_ratio) == (None, None, None)
    assert row.data_loss_detected is False


def test_a_low_watermark_above_the_high_watermark_says_nothing_about_loss() -> None:
    # low 12 > high 10 can only come from a log truncated or re-created between the two reads:
    # committed 5 < 12 must not be reported as a loss of 7 records.
    row = one_row(5, 12, 10)
    assert (row.messages_lost, row.retention_margin, row.data_loss_detected) == (None, None, False)
    assert row.lag == 5


def test_window_that_reads_negative_is_treated_as_empty() -> None:
    assert lag.retention_figures(5, 12, 10).lag_retention_ratio == INF


# ------------------------------------------------------------------------------------- time lag


@pytest.mark.parametrize(
    ("committed", "low", "high", "sample", "seconds", "compaction", "loss"),
    [
        # caught up: 0, no fetch needed
        (100, 0, 100, None, 0.0, False, False),
        # lagging with a timestamp 30 s old
        (90, 0, 100, TimestampSample(90, int((NOW - 30) * 1000)), 30.0, False, False),
        # lagging, no timestamp this cycle: absent, never made up
        (90, 0, 100, None, None, False, False),
        # producer clock ahead of ours: clamped at 0
        (90, 0, 100, TimestampSample(90, int((NOW + 60) * 1000)), 0.0, False, False),
        # record at committed compacted away: flagged, lag from the next record
        (90, 0, 100, TimestampSample(95, int((NOW - 5) * 1000), True), 5.0, True, False),
        # retention: data loss, and never both flags at once
        (10, 50, 100, TimestampSample(50, int((NOW - 70) * 1000), True), 70.0, False, True),
        # a gap explained by transaction markers is not compaction
        (90, 0, 100, TimestampSample(92, int((NOW - 1) * 1000), False), 1.0, False, False),
        # only a trailing transaction marker left: caught up in time (timestamp means nothing)
        (99, 0, 100, TimestampSample(100, 0, end_of_log=True), 0.0, False, False),
        # records the cleaner removed up to the end of the log: nothing to read, but flagged
        (95, 0, 100, TimestampSample(100, 0, True, end_of_log=True), 0.0, True, False),
    ],
)
def test_time_lag_and_flags(
    committed: int,
    low: int,
    high: int,
    sample: TimestampSample | None,
    seconds: float | None,
    compaction: bool,
    loss: bool,
) -> None:
    row = one_row(committed, low, high, sample)
    if seconds is None:
        assert row.lag_seconds is None
    else:
        assert row.lag_seconds == pytest.approx(seconds)
    assert row.compaction_detected is compaction
    assert row.data_loss_detected is loss


def test_missing_record_with_unknown_low_raises_no_flag() -> None:
    # Compaction needs committed >= low; with low unknown it may just as well be retention.
    row = one_row(90, None, 100, TimestampSample(95, int((NOW - 5) * 1000), True))
    assert row.lag_seconds == pytest.approx(5.0)
    assert (row.compaction_detected, row.data_loss_detected) == (False, False)


def test_sample_for_another_offset_is_not_used() -> None:
    part = tp("t", 0)
    snapshot = calculate(
        cycle(
            committed={"g": {part: 90}},
            watermarks={part: Watermarks(0, 100)},
            samples={(part, 80): TimestampSample(80, int(NOW * 1000))},
        )
    )
    assert snapshot.rows[0].lag_seconds is None


def test_sampling_disabled_gives_no_time_lag_and_no_compaction() -> None:
    sample = TimestampSample(95, int((NOW - 5) * 1000), True)
    for committed in (90, 100):
        row = one_row(committed, 0, 100, sample, enabled=False)
        assert row.lag_seconds is None
        assert row.compaction_detected is False
    assert one_row(10, 50, 100, enabled=False).data_loss_detected is True


# ------------------------------------------------------------------------- rows and member labels


def test_member_labels_come_from_the_owner_of_the_partition() -> None:
    alice = GroupMember("consumer-1-abc", "client-a", "/10.0.0.1", frozenset({tp("t", 0)}))
    bob = GroupMember("consumer-2-def", "client-b", "10.0.0.2", frozenset({tp("t", 1)}))
    snapshot = calculate(
        cycle(
            groups={"g": describe("g", (alice, bob))},
            committed={"g": {tp("t", 0): 5, tp("t", 1): 5, tp("t", 2): 5}},
            watermarks={tp("t", n): Watermarks(0, 10) for n in range(3)},
        )
    )
    assert [(r.partition, r.member_host, r.consumer_id, r.client_id) for r in snapshot.rows] == [
        (0, "/10.0.0.1", "consumer-1-abc", "client-a"),  # as the broker reports it
        (1, "10.0.0.2", "consumer-2-def", "client-b"),
        (2, "", "", ""),  # nobody owns it: the series is still there, labels empty
    ]


def test_commits_without_watermarks_produce_no_row() -> None:
    snapshot = calculate(
        cycle(
            committed={"g": {tp("kept", 0): 5, tp("deleted", 0): 5, tp("kept", 9): 5}},
            watermarks={tp("kept", 0): Watermarks(0, 10), tp("kept", 1): Watermarks(0, 10)},
        )
    )
    assert [row.topic_partition for row in snapshot.rows] == [tp("kept", 0)]
    # Every partition with watermarks is exported, committed or not.
    assert [(p.topic, p.partition) for p in snapshot.partitions] == [("kept", 0), ("kept", 1)]


def test_rows_groups_and_partitions_are_sorted() -> None:
    marks = {tp(t, n): Watermarks(0, 10) for t in ("b", "a") for n in (1, 0)}
    snapshot = calculate(
        cycle(
            committed={"z": dict.fromkeys(marks, 3), "m": dict.fromkeys(reversed(marks), 3)},
            watermarks=marks,
        )
    )
    keys = [(r.group, r.topic, r.partition) for r in snapshot.rows]
    assert keys == sorted(keys)
    assert [g.group for g in snapshot.groups] == ["m", "z"]
    assert [(p.topic, p.partition) for p in snapshot.partitions] == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
    ]
    assert list(snapshot.groups[0].topic_sum_lag) == ["a", "b"]


# ------------------------------------------------------------------------------------ aggregates


def test_group_summary_aggregates() -> None:
    member = GroupMember("m", "c", "/h", frozenset({tp("a", 0)}))
    snapshot = calculate(
        cycle(
            groups={
                "g": describe("g", (member,), GroupState.STABLE),
                "idle": describe("idle", (), GroupState.EMPTY),
            },
            committed={"g": {tp("a", 0): 90, tp("a", 1): 10, tp("b", 0): 7}},
            watermarks={
                tp("a", 0): Watermarks(0, 100),
                tp("a", 1): Watermarks(0, 10),
                tp("b", 0): Watermarks(0, 12),
            },
            samples={
                (tp("a", 0), 90): TimestampSample(90, int((NOW - 12) * 1000)),
                (tp("b", 0), 7): TimestampSample(7, int((NOW - 40) * 1000)),
            },
        )
    )
    g, idle = snapshot.groups
    assert (g.group, g.state, g.member_count) == ("g", GroupState.STABLE, 1)
    assert (g.protocol_type, g.group_type) == ("consumer", "classic")
    assert (g.max_lag, g.sum_lag) == (10, 15)
    assert dict(g.topic_sum_lag) == {"a": 10, "b": 5}
    assert g.max_lag_seconds == pytest.approx(40.0)
    # A described group with no commits still gets a summary: zero lag, not absent.
    assert (idle.group, idle.state, idle.member_count) == ("idle", GroupState.EMPTY, 0)
    assert (idle.max_lag, idle.sum_lag, dict(idle.topic_sum_lag)) == (0, 0, {})
    assert idle.max_lag_seconds == 0.0


@pytest.mark.parametrize(
    ("samples", "enabled", "expected"),
    [
        ({}, True, None),  # every lagging partition lacks a timestamp
        ({(tp("t", 0), 5): TimestampSample(5, int((NOW - 3) * 1000))}, True, 3.0),  # known ones
        ({(tp("t", 0), 5): TimestampSample(5, int((NOW - 3) * 1000))}, False, None),  # disabled
    ],
)
def test_group_max_lag_seconds(
    samples: Mapping[tuple[TopicPartition, int], TimestampSample],
    enabled: bool,
    expected: float | None,
) -> None:
    snapshot = calculate(
        cycle(
            committed={"g": {tp("t", 0): 5, tp("t", 1): 5, tp("t", 2): 10}},
            watermarks={tp("t", n): Watermarks(0, 10) for n in range(3)},
            samples=samples,
            enabled=enabled,
        )
    )
    (group,) = snapshot.groups
    if expected is None:
        assert group.max_lag_seconds is None
    else:
        assert group.max_lag_seconds == pytest.approx(expected)


def test_committed_group_without_description_keeps_its_rows() -> None:
    snapshot = calculate(
        cycle(
            groups={},
            committed={"orphan": {tp("t", 0): 5}},
            watermarks={tp("t", 0): Watermarks(0, 10)},
        )
    )
    assert [r.group for r in snapshot.rows] == ["orphan"]
    (summary,) = snapshot.groups
    assert (summary.state, summary.member_count, summary.sum_lag) == (GroupState.UNKNOWN, 0, 5)


def test_snapshot_header_and_counts() -> None:
    snapshot = calculate(
        cycle(
            committed={"g": {tp("t", 0): 90, tp("t", 1): 1, tp("t", 2): 2}},
            watermarks={
                tp("t", 0): Watermarks(0, 100),
                tp("t", 1): Watermarks(5, 100),
                tp("t", 2): Watermarks(5, 100),
            },
            samples={(tp("t", 0), 90): TimestampSample(93, int(NOW * 1000), True)},
            failures=(1, 2, 3, 4),
        )
    )
    assert snapshot.cluster == "east"
    assert snapshot.cycle == 7
    assert dict(snapshot.labels) == {"dc": "x", "env": "prod"}
    assert (snapshot.observed_at, snapshot.started_at) == (SAMPLED_AT, STARTED)
    assert (snapshot.duration_seconds, snapshot.poll_time_ms) == (1.5, 400.0)
    assert snapshot.timestamp_sampling is True
    assert snapshot.compaction_detected_count == 1
    assert snapshot.data_loss_partition_count == 2
    assert snapshot.error_count == 10


# ------------------------------------------------------------------------------------ properties

TOPICS = st.sampled_from(["a", "b", "c"])
PARTITIONS = st.tuples(TOPICS, st.integers(0, 3)).map(lambda t: tp(*t))
OFFSETS = st.integers(0, 1_000)


@st.composite
def cycles(draw: st.DrawFn) -> TimestampsSampled:
    marks: dict[TopicPartition, Watermarks] = {}
    for part in draw(st.sets(PARTITIONS, max_size=8)):
        high = draw(OFFSETS)
        low = draw(st.none() | st.integers(0, high))
        marks[part] = Watermarks(low, high)
    group_names = draw(st.sets(st.sampled_from(["g1", "g2", "g3", "g4"]), max_size=4))
    committed = {
        group: draw(st.dictionaries(PARTITIONS, st.integers(0, 1_200), max_size=8))
        for group in group_names
    }
    samples: dict[tuple[TopicPartition, int], TimestampSample] = {}
    for offsets in committed.values():
        for part, offset in offsets.items():
            if draw(st.booleans()):
                ts = draw(st.integers(int((NOW - 3600) * 1000), int((NOW + 60) * 1000)))
                samples[(part, offset)] = TimestampSample(offset, ts, draw(st.booleans()))
    return cycle(
        committed=committed,
        watermarks=marks,
        samples=samples,
        enabled=draw(st.booleans()),
    )


@given(cycles())
def test_properties(sampled: TimestampsSampled) -> None:
    snapshot = calculate(sampled)
    watermarks = sampled.watermarks.watermarks
    committed = sampled.watermarks.offsets.committed

    expected_rows = sum(
        1 for offsets in committed.values() for part in offsets if part in watermarks
    )
    assert len(snapshot.rows) == expected_rows

    for row in snapshot.rows:
        assert row.lag >= 0
        assert row.lag == max(row.high - row.committed, 0)
        assert (row.low is None) == (row.messages_lost is None)
        assert (row.low is None) == (row.retention_margin is None)
        assert (row.low is None) == (row.lag_retention_ratio is None)
        if row.low is None:
            assert not row.data_loss_detected
        else:
            assert row.data_loss_detected == (row.committed < row.low)
            assert row.messages_lost == max(row.low - row.committed, 0)
            ratio = row.lag_retention_ratio
            assert ratio is not None
            assert ratio >= 0
            if row.lag == 0:
                assert ratio == 0
            elif row.high == row.low:
                assert ratio == math.inf
            else:
                assert ratio == pytest.approx(row.lag / (row.high - row.low) * 100)
        assert not (row.compaction_detected and row.data_loss_detected)
        if not sampled.enabled:
            assert row.lag_seconds is None
            assert not row.compaction_detected
        elif row.lag == 0:
            assert row.lag_seconds == 0.0
        if row.lag_seconds is not None:
            assert row.lag_seconds >= 0

    by_group: dict[str, list[PartitionRow]] = {}
    for row in snapshot.rows:
        by_group.setdefault(row.group, []).append(row)
    assert {g.group for g in snapshot.groups} == set(committed)
    for summary in snapshot.groups:
        rows = by_group.get(summary.group, [])
        assert summary.sum_lag == sum(r.lag for r in rows)
        assert summary.max_lag == max((r.lag for r in rows), default=0)
        assert sum(summary.topic_sum_lag.values()) == summary.sum_lag
        lagging = [r for r in rows if r.lag > 0]
        unknown = bool(lagging) and all(r.lag_seconds is None for r in lagging)
        assert (summary.max_lag_seconds is None) == (not sampled.enabled or unknown)
        if summary.max_lag_seconds is not None:
            assert summary.max_lag_seconds == max(
                (r.lag_seconds for r in rows if r.lag_seconds is not None), default=0.0
            )

    assert snapshot.compaction_detected_count == sum(r.compaction_detected for r in snapshot.rows)
    assert snapshot.data_loss_partition_count == sum(r.data_loss_detected for r in snapshot.rows)
    assert len(snapshot.partitions) == len(watermarks)
    keys = [(r.group, r.topic, r.partition) for r in snapshot.rows]
    assert keys == sorted(keys)


def test_consumable_lag_is_known_only_at_the_end_of_the_log() -> None:
    # Committed on the trailing marker: offset lag 1 (compatibility), nothing left to consume.
    assert one_row(99, 0, 100, TimestampSample(100, 0, end_of_log=True)).consumable_lag == 0
    assert one_row(99, 0, 100, TimestampSample(99, int((NOW - 3) * 1000))).consumable_lag is None
    assert one_row(100, 0, 100, None).consumable_lag is None
