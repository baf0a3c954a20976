"""The evaluator's compact history (health/history.py) against a plain reference: the same
evaluation, cycle after cycle, as a history kept the simple way — a list of observation tuples
per row, judged by ``rules.rates`` / ``rules.partition_status`` — and a bounded deque of high
watermarks per partition. Hypothesis drives thinning (a full window), window expiry, rewinds,
carried rows, rows coming and going and clock jumps both ways."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from klag_pipeline.health.evaluator import MAX_OBSERVATIONS, Evaluator
from klag_pipeline.health.model import PartitionHealth, Status
from klag_pipeline.health.rules import (
    AT,
    COMMITTED,
    NO_REWIND,
    Point,
    Rewind,
    Thresholds,
    catch_up_seconds,
    partition_status,
    rates,
)
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.settings.schema import HealthSettings
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionOffsets, PartitionRow

KEYS = [("g0", "t", 0), ("g0", "t", 1), ("g1", "t", 0), ("g1", "u", 0)]


@dataclass
class _RefRow:
    points: list[Point] = field(default_factory=list)
    first_seen: float = 0.0
    last_moved: float | None = None
    rewind: Rewind | None = None


class Reference:
    """The history as documented: per row a list of (at, committed, high, lag), appended unless
    carried or not newer; when full the second-oldest goes; points older than the window go;
    the last backward commit step is remembered until its time leaves the window."""

    def __init__(self, settings: HealthSettings, poll: float) -> None:
        self.window = settings.window
        self.limit = min(math.ceil(settings.window / poll) + 2, MAX_OBSERVATIONS)
        self.thresholds = Thresholds(settings.stalled_after, settings.stopped_after)
        self.rows: dict[tuple[str, str, int], _RefRow] = {}
        self.highs: dict[TopicPartition, deque[tuple[float, int]]] = {}

    def row(self, r: PartitionRow, now: float, members: bool) -> PartitionHealth:
        memory = self.rows.setdefault((r.group, r.topic, r.partition), _RefRow(first_seen=now))
        points = memory.points
        if not r.carried and (not points or points[-1][AT] < now):
            if points:
                before = points[-1][COMMITTED]
                if before != r.committed:
                    memory.last_moved = now
                if r.committed < before:
                    memory.rewind = Rewind(now, before, r.committed)
                if len(points) == self.limit:
                    del points[1]
            lag = r.consumable_lag if r.consumable_lag is not None else r.lag
            points.append((now, r.committed, r.high, lag))
        points[:] = [p for p in points if p[AT] >= now - self.window]
        if memory.rewind is not None and (not points or memory.rewind.at <= points[0][AT]):
            memory.rewind = None
        observed = rates(points)
        moved = memory.last_moved
        age = max(0.0, now - (moved if moved is not None else memory.first_seen))
        status, reason = partition_status(
            points,
            members=members,
            commit_age=age,
            seen_moving=moved is not None,
            thresholds=self.thresholds,
            rewound=memory.rewind or NO_REWIND,
        )
        lag_now = points[-1][3] if points else r.lag
        return PartitionHealth(observed, catch_up_seconds(lag_now, observed), age, status, reason)

    def produce(self, partitions: tuple[PartitionOffsets, ...], now: float) -> dict[object, float]:
        out: dict[object, float] = {}
        for o in partitions:
            tp = TopicPartition(o.topic, o.partition)
            kept = self.highs.setdefault(tp, deque(maxlen=self.limit))
            if not kept or kept[-1][0] < now:
                kept.append((now, o.high))
            while kept and kept[0][0] < now - self.window:
                kept.popleft()
            if len(kept) >= 2 and kept[-1][0] > kept[0][0]:
                out[tp] = (kept[-1][1] - kept[0][1]) / (kept[-1][0] - kept[0][0])
        for tp in self.highs.keys() - {TopicPartition(o.topic, o.partition) for o in partitions}:
            del self.highs[tp]
        return out


def _row(key: tuple[str, str, int], committed: int, high: int, carried: bool) -> PartitionRow:
    group, topic, partition = key
    lag = max(high - committed, 0)
    return PartitionRow(
        group=group,
        topic=topic,
        partition=partition,
        member_host="/h",
        consumer_id="c",
        client_id="cl",
        committed=committed,
        low=0,
        high=high,
        lag=lag,
        lag_seconds=None,
        compaction_detected=False,
        data_loss_detected=False,
        messages_lost=0,
        retention_margin=committed,
        lag_retention_ratio=None,
        consumable_lag=lag - 1 if lag % 3 == 1 else None,
        carried=carried,
    )


def _snapshot(at: float, rows: list[PartitionRow], members: dict[str, bool]) -> ClusterSnapshot:
    highs = {(r.topic, r.partition): r.high for r in rows}
    return ClusterSnapshot(
        cluster="c",
        labels=MappingProxyType({}),
        cycle=0,
        observed_at=at,
        started_at=at,
        duration_seconds=0.1,
        poll_time_ms=1.0,
        timestamp_sampling=False,
        partitions=tuple(PartitionOffsets(t, p, 0, h) for (t, p), h in sorted(highs.items())),
        groups=tuple(
            GroupSummary(
                group=g,
                state=GroupState.STABLE if members[g] else GroupState.EMPTY,
                protocol_type="consumer",
                group_type="classic",
                member_count=1 if members[g] else 0,
                max_lag=0,
                max_lag_seconds=None,
                sum_lag=0,
                topic_sum_lag=MappingProxyType({}),
            )
            for g in sorted({r.group for r in rows})
        ),
        rows=tuple(rows),
        compaction_detected_count=0,
        data_loss_partition_count=0,
        error_count=0,
    )


_cycle = st.tuples(
    # seconds since the last snapshot: mostly one poll, sometimes a repeat, a gap, a jump back
    st.sampled_from([10.0, 10.0, 10.0, 10.0, 7.5, 0.0, 45.0, 400.0, -25.0]),
    st.lists(  # per key: present, carried, commit step (negative: a rewind), produced
        st.tuples(
            st.sampled_from([True, True, True, False]),
            st.sampled_from([False, False, False, True]),
            st.integers(-40, 60),
            st.integers(0, 50),
        ),
        min_size=len(KEYS),
        max_size=len(KEYS),
    ),
    st.booleans(),  # g0 has members
)


@settings(max_examples=150, deadline=None)
@given(
    window=st.sampled_from([30.0, 60.0, 300.0]),
    poll=st.sampled_from([5.0, 10.0, 30.0]),
    base=st.sampled_from([0, 2**31, 2**62]),
    cycles=st.lists(_cycle, min_size=1, max_size=60),
)
def test_the_compact_history_evaluates_as_the_plain_one(
    window: float,
    poll: float,
    base: int,
    cycles: list[tuple[float, list[tuple[bool, bool, int, int]], bool]],
) -> None:
    health = HealthSettings(window=window, stalled_after=window, stopped_after=window)
    evaluator = Evaluator(health, poll)
    reference = Reference(health, poll)
    now = 1_700_000_000.0
    committed = dict.fromkeys(KEYS, base + 1000)
    high = dict.fromkeys(KEYS, base + 1000)
    for step, per_key, g0_members in cycles:
        now += step
        rows = []
        for key, (present, carried, commit_step, produced) in zip(KEYS, per_key, strict=True):
            high[key] += produced
            committed[key] = max(base, min(high[key], committed[key] + commit_step))
            if present:
                rows.append(_row(key, committed[key], high[key], carried))
        members = {"g0": g0_members, "g1": False}
        snapshot = _snapshot(now, rows, members)
        result = evaluator.evaluate(snapshot).health
        assert result is not None
        for r in rows:
            expected = reference.row(r, now, members[r.group])
            assert result.partitions[(r.group, r.topic_partition)] == expected
        for key in reference.rows.keys() - {(r.group, r.topic, r.partition) for r in rows}:
            del reference.rows[key]
        assert dict(result.produce_rates) == reference.produce(snapshot.partitions, now)


def _one_row_evaluator(window: float, poll: float) -> Evaluator:
    return Evaluator(HealthSettings(window=window, stalled_after=1e9, stopped_after=1e9), poll)


def test_a_rewind_is_reported_while_in_the_window_though_thinned_out_of_the_history() -> None:
    # window 100 s at a 50 s poll: 4 observations per row, so every 10 s poll thins the
    # second-oldest; the one after the backward step (t=20) is gone from t=50 on, the step
    # stays inside the window (after the oldest kept, t=0) until t=0 expires at t=110.
    evaluator = _one_row_evaluator(100.0, 50.0)
    commits = {0: 100, 10: 200, 20: 150}
    statuses = {}
    for at in range(0, 120, 10):
        committed = commits.get(at, 150 + at)
        snapshot = _snapshot(float(at), [_row(KEYS[0], committed, 1000, False)], {"g0": True})
        result = evaluator.evaluate(snapshot).health
        assert result is not None
        statuses[at] = result.partitions[("g0", TopicPartition("t", 0))]
    assert [at for at, h in statuses.items() if h.status is Status.REWOUND] == list(
        range(20, 110, 10)
    )
    assert statuses[50].reason == "committed offset moved back from 200 to 150"
    # At t=100 the kept points are t=0, 80, 90, 100 (thinned): the rates span all 100 s.
    assert statuses[100].rates.consume == (250 - 100) / 100


def test_the_time_table_keeps_only_what_the_histories_refer_to() -> None:
    # Reaches into the evaluator's private timeline: its size is the only sign of a leak.
    evaluator = _one_row_evaluator(60.0, 10.0)
    limit = math.ceil(60.0 / 10.0) + 2
    for cycle in range(500):
        rows = [_row(KEYS[0], 100 + cycle, 200 + cycle, False)]
        evaluator.evaluate(_snapshot(10.0 * cycle, rows, {"g0": True}))
        assert len(evaluator._timeline.times) <= 2 * limit + 1


def test_the_trend_rule_reads_a_point_at_the_windows_middle_as_the_earlier_half() -> None:
    # Lags 5, 9, 8 at t=0, 10, 20: the middle (10) belongs to the earlier half, whose top (9)
    # the later half (8) does not clear: consuming, not lagging (rules.py rule 11).
    evaluator = _one_row_evaluator(300.0, 10.0)
    for at, committed in ((0, 95), (10, 191), (20, 292)):
        high = {0: 100, 10: 200, 20: 300}[at]
        snapshot = _snapshot(float(at), [_row(KEYS[0], committed, high, False)], {"g0": True})
        result = evaluator.evaluate(snapshot).health
    assert result is not None
    judged = result.partitions[("g0", TopicPartition("t", 0))]
    assert (judged.status, judged.reason) == (Status.OK, "consuming")
