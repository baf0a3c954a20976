"""The evaluation's memory across cycles and the per-snapshot evaluation (no I/O, no asyncio).

State per (group, topic, partition): the observations of the last ``window`` seconds (at most
``window / poll_interval`` + 2 of them, and at most 16), when its committed offset last moved and
when it was first seen. Per partition of a kept topic: its high watermark observations over the
same window. Per group: the last state and the rebalance count. Everything a snapshot no longer
contains is dropped with it, so memory follows what exists, O(window samples) per partition. The
observations are kept in compact form (health/history.py): at the ``large`` preset (20,000 rows,
16 observations each) the evaluator holds ~18 MB, ~0.9 KB per row (``python -m bench
evaluation``), of which ~0.6 KB the observations and ~0.15 KB the row's result key.

Estimated time lag (health/estimate.py): per partition, a timeline of at most
``rate_history_samples`` high watermarks over at most ``rate_history_max_age`` — of every kept
partition in ``mode = "rate"``, else only of topics whose Fetch was denied (kept from the first
denial until a row of the topic has an exact time lag again, or the topic disappears).

Times are the snapshots' ``observed_at`` (unix seconds): a wall-clock jump shows as one odd rate
for one window; commit ages are "since the exporter first saw it" after a start.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from klag_pipeline import lag
from klag_pipeline.health.estimate import Timelines
from klag_pipeline.health.history import (
    STRIDE,
    HighWatermarks,
    RowHistory,
    Timeline,
    first_point,
    last_point,
    new_values,
)
from klag_pipeline.health.model import (
    NO_RATES,
    ClusterHealth,
    GroupHealth,
    GroupTopicHealth,
    PartitionHealth,
    Rates,
    Status,
)
from klag_pipeline.health.rules import (
    LAG,
    NO_REWIND,
    Rewind,
    Thresholds,
    catch_up_seconds,
    rates_between,
    status_between,
    too_few,
    worst,
)
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.settings.schema import HealthSettings, TimestampSamplingSettings
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionRow, denied_topics

REBALANCING: frozenset[GroupState] = frozenset(
    {
        GroupState.PREPARING_REBALANCE,
        GroupState.COMPLETING_REBALANCE,
        GroupState.ASSIGNING,
        GroupState.RECONCILING,
    }
)

RowKey = tuple[str, TopicPartition]
MemoryKey = tuple[str, str, int]
"""(group, topic, partition): the evaluator's own key, a tuple of atoms the cyclic GC stops
tracking. The row's :data:`RowKey` (which holds a TopicPartition, so stays tracked) is made once
and kept in its history, to be reused as its key in every cycle's result."""
ByTopic = dict[tuple[str, str], list[tuple[PartitionRow, PartitionHealth]]]
"""(group, topic) → its rows with their evaluations, in snapshot order."""

MAX_OBSERVATIONS: Final = 16
"""Observations kept per row: enough for the rates (oldest, newest) and the trend rule."""


@dataclass(slots=True)
class _GroupMemory:
    state: GroupState
    rebalances: int = 0
    last_rebalance_at: float | None = None


class Evaluator:
    """Feed it every snapshot of one cluster, in order; it returns each one's evaluation."""

    def __init__(
        self,
        settings: HealthSettings,
        poll_interval: float,
        sampling: TimestampSamplingSettings | None = None,
    ) -> None:
        self._settings = settings
        sampling = sampling or TimestampSamplingSettings()
        # Time lag switched off entirely: nothing to estimate either.
        self._estimating = sampling.enabled
        self._rate_mode = sampling.mode == "rate"
        self._timelines = Timelines(sampling.rate_history_samples, sampling.rate_history_max_age)
        self._denied: frozenset[str] = frozenset()
        self._window = settings.window
        # Per row at most this many observations (memory: 20,000 rows × 16 × 32 bytes at the
        # large preset); a window of more polls is thinned, not shortened.
        self._max_samples = min(math.ceil(settings.window / poll_interval) + 2, MAX_OBSERVATIONS)
        self._max_values = self._max_samples * STRIDE
        self._thresholds = Thresholds(settings.stalled_after, settings.stopped_after)
        self._timeline = Timeline(self._max_samples)
        self._grew_beyond_noise = self._timeline.grew_beyond_noise
        self._rows: dict[MemoryKey, RowHistory] = {}
        self._highs = HighWatermarks(self._timeline, settings.window, self._max_samples)
        self._groups: dict[str, _GroupMemory] = {}

    def evaluate(self, snapshot: ClusterSnapshot) -> ClusterSnapshot:
        """``snapshot`` with its ``health`` (and, with ``drop_abandoned``, without the rows of
        abandoned group-topics)."""
        now = snapshot.observed_at
        cycle = self._timeline.start(now)
        members = {g.group: g.member_count > 0 for g in snapshot.groups}
        partitions: dict[RowKey, PartitionHealth] = {}
        self._observe_highs(snapshot)
        # Each row's evaluation goes to its group-topic here, in the one walk over the rows.
        by_topic: ByTopic = {}
        evaluate_row = self._evaluate_row
        # Estimates exist only in rate mode or for denied topics: the usual cycle skips the call.
        with_estimate = self._with_estimate if self._rate_mode or self._denied else None
        seen: set[MemoryKey] = set()
        remembered_rows = self._rows
        for row in snapshot.rows:
            remembered = (row.group, row.topic, row.partition)
            seen.add(remembered)
            memory = remembered_rows.get(remembered)
            if memory is None:
                key = (row.group, TopicPartition(row.topic, row.partition))
                memory = remembered_rows[remembered] = RowHistory(new_values(), now, key)
            judged = evaluate_row(memory, row, now, cycle, members.get(row.group, False))
            if with_estimate is not None:
                judged = with_estimate(judged, row, now)
            # The row's key object, made once: 20,000 key pairs a cycle fewer at `large`.
            partitions[memory.key] = judged
            pairs = by_topic.get(topic_key := (row.group, row.topic))
            if pairs is None:
                pairs = by_topic[topic_key] = []
            pairs.append((row, judged))
        for gone in self._rows.keys() - seen:
            del self._rows[gone]
        produce = self._highs.rates(snapshot.partitions, now, cycle)
        self._timeline.trim(
            itertools.chain((m.values for m in self._rows.values()), self._highs.histories()),
            self._max_samples,
        )
        topics = self._topics(snapshot, by_topic)
        groups = self._groups_health(snapshot, by_topic, now)
        health = ClusterHealth(
            window_seconds=self._window,
            partitions=MappingProxyType(partitions),
            topics=MappingProxyType(topics),
            groups=MappingProxyType(groups),
            produce_rates=MappingProxyType(produce),
        )
        if self._settings.drop_abandoned and any(t.abandoned for t in topics.values()):
            return _without_abandoned(snapshot, health)
        return dataclasses.replace(snapshot, health=health)

    # -- per partition ------------------------------------------------------------------------

    def _evaluate_row(
        self, memory: RowHistory, row: PartitionRow, now: float, cycle: int, members: bool
    ) -> PartitionHealth:
        # The hot path: once per row per cycle (20,000 at the large preset), so it is one
        # function, copies nothing and finds a rewind when appending instead of scanning.
        values = memory.values
        times = self._timeline.times
        # A carried row repeats last cycle's values: not an observation of this one.
        if not row.carried and (not values or times[values[-STRIDE]] < now):
            committed = row.committed
            if values:
                before = values[-3]
                if before != committed:
                    memory.last_moved = now
                    if committed < before:
                        memory.rewind = Rewind(now, before, committed)
                if len(values) == self._max_values:
                    # Full: thin the older part (keep the oldest, for the window's span, and
                    # the newest points dense) rather than shorten the window.
                    del values[STRIDE : 2 * STRIDE]
            judged = row.consumable_lag if row.consumable_lag is not None else row.lag
            values.extend((cycle, committed, row.high, judged))
        oldest = now - self._window
        stale = 0
        while stale < len(values) and times[values[stale]] < oldest:
            stale += STRIDE
        if stale:
            del values[:stale]
        last_moved = memory.last_moved
        commit_age = max(0.0, now - (last_moved if last_moved is not None else memory.first_seen))
        if len(values) < 2 * STRIDE:
            memory.rewind = None  # at most one observation: no step inside the window
            status, reason = too_few(len(values) // STRIDE)
            lag_now = values[-1] if values else row.lag
            return PartitionHealth(
                rates=NO_RATES,
                catch_up_seconds=catch_up_seconds(lag_now, NO_RATES),
                commit_age_seconds=commit_age,
                status=status,
                reason=reason,
            )
        first = first_point(values, times)
        last = last_point(values, times)
        rewind = memory.rewind
        if rewind is not None and rewind.at <= first[0]:
            # Its earlier observation has left the window: the step is no longer inside it.
            rewind = memory.rewind = None
        observed = rates_between(first, last)
        status, reason = status_between(
            first,
            last,
            values,
            self._grew_beyond_noise,
            members=members,
            commit_age=commit_age,
            seen_moving=last_moved is not None,
            thresholds=self._thresholds,
            rewound=rewind if rewind is not None else NO_REWIND,
        )
        return PartitionHealth(
            rates=observed,
            catch_up_seconds=catch_up_seconds(last[LAG], observed),
            commit_age_seconds=commit_age,
            status=status,
            reason=reason,
        )

    def _observe_highs(self, snapshot: ClusterSnapshot) -> None:
        """Add this snapshot's high watermarks to the timelines the estimate needs."""
        if not self._estimating:
            return
        if not self._rate_mode:
            if not self._denied and not snapshot.time_lag_denied:
                return  # the usual cycle: no topic to estimate, no walk over the rows
            self._denied, _ = denied_topics(self._denied, snapshot)
        self._timelines.observe(
            snapshot.observed_at,
            (
                (TopicPartition(o.topic, o.partition), o.high)
                for o in snapshot.partitions
                if self._rate_mode or o.topic in self._denied
            ),
        )

    def _with_estimate(
        self, health: PartitionHealth, row: PartitionRow, now: float
    ) -> PartitionHealth:
        """``health`` with the estimated time lag where the exact one cannot be read: every row
        in rate mode, a lagging row without exact time lag of a denied topic otherwise."""
        if self._rate_mode:
            wanted = self._estimating
        else:
            wanted = row.lag > 0 and row.lag_seconds is None and row.topic in self._denied
        timeline = self._timelines.get(row.topic_partition) if wanted else None
        if timeline is None:
            return health
        estimate = timeline.lag_seconds(row.committed, now)
        return health._replace(estimated_lag_seconds=estimate)

    # -- per group-topic and group -----------------------------------------------------------

    def _topics(
        self, snapshot: ClusterSnapshot, by_topic: ByTopic
    ) -> dict[tuple[str, str], GroupTopicHealth]:
        summaries = {g.group: g for g in snapshot.groups}
        topics = {}
        for (group, topic), entries in by_topic.items():
            summary = summaries.get(group)
            age = min(h.commit_age_seconds for _, h in entries)
            active = (
                summary is not None
                and summary.member_count > 0
                and summary.state is GroupState.STABLE
            )
            assigned = any(row.consumer_id for row, _ in entries)
            topics[(group, topic)] = GroupTopicHealth(
                consume_rate=_sum(h.rates.consume for _, h in entries),
                lag_velocity=_sum(h.rates.lag_velocity for _, h in entries),
                commit_age_seconds=age,
                abandoned=active and not assigned and age >= self._settings.abandoned_after,
            )
        return topics

    def _groups_health(
        self,
        snapshot: ClusterSnapshot,
        by_topic: ByTopic,
        now: float,
    ) -> dict[str, GroupHealth]:
        by_group: dict[str, list[PartitionHealth]] = {}
        for (group, _), pairs in by_topic.items():
            by_group.setdefault(group, []).extend(health for _, health in pairs)
        groups = {}
        for summary in snapshot.groups:
            memory = self._rebalance_memory(summary, now)
            entries = by_group.get(summary.group, [])
            status, reason = _group_status(summary, entries, self._settings)
            groups[summary.group] = GroupHealth(
                status=status,
                reason=reason,
                consume_rate=_sum(h.rates.consume for h in entries),
                lag_velocity=_sum(h.rates.lag_velocity for h in entries),
                max_catch_up_seconds=_max_catch_up(h.catch_up_seconds for h in entries),
                rebalances=memory.rebalances,
                last_rebalance_at=memory.last_rebalance_at,
                commit_age_seconds=min((h.commit_age_seconds for h in entries), default=None),
            )
        for group in self._groups.keys() - groups.keys():
            del self._groups[group]
        return groups

    def _rebalance_memory(self, summary: GroupSummary, now: float) -> _GroupMemory:
        memory = self._groups.get(summary.group)
        if memory is None:
            # A group first seen mid-rebalance: that transition was not observed.
            memory = self._groups[summary.group] = _GroupMemory(summary.state)
            return memory
        if summary.state in REBALANCING and memory.state not in REBALANCING:
            memory.rebalances += 1
            memory.last_rebalance_at = now
        memory.state = summary.state
        return memory


def _group_status(
    summary: GroupSummary, entries: list[PartitionHealth], settings: HealthSettings
) -> tuple[Status, str]:
    if not entries:
        return Status.UNKNOWN, "no committed offsets"
    status = worst([h.status for h in entries])
    reason = next((h.reason for h in entries if h.status is status), "")
    if status < Status.LAGGING:
        limit = settings.max_lag_seconds
        if limit > 0 and summary.max_lag_seconds is not None and summary.max_lag_seconds > limit:
            return Status.LAGGING, f"time lag {summary.max_lag_seconds:.0f}s over {limit:.0f}s"
        catch_up = _max_catch_up(h.catch_up_seconds for h in entries)
        if catch_up is not None and math.isinf(catch_up):
            # No gain on the producer: too slow only while the lag grows beyond its wobble —
            # and a partition whose lag does that is LAGGING already (rule 11), so this branch
            # never sees one. A consumer keeping pace never reaches 0, yet is healthy; its lag
            # wobbles, so the window's end-to-end velocity alone is positive half the time.
            catch_up = None
        limit = settings.max_catch_up_seconds
        if limit > 0 and catch_up is not None and catch_up > limit:
            shown = "never" if math.isinf(catch_up) else f"{catch_up:.0f}s"
            return Status.LAGGING, f"catch-up time {shown} over {limit:.0f}s"
    return status, reason


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max_catch_up(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _without_abandoned(snapshot: ClusterSnapshot, health: ClusterHealth) -> ClusterSnapshot:
    abandoned = {key for key, topic in health.topics.items() if topic.abandoned}
    rows = tuple(r for r in snapshot.rows if (r.group, r.topic) not in abandoned)
    by_group: dict[str, list[PartitionRow]] = {}
    for row in rows:
        by_group.setdefault(row.group, []).append(row)
    groups = tuple(
        lag.summarise(g, by_group.get(g.group, []), sampling=snapshot.timestamp_sampling)
        for g in snapshot.groups
    )
    return dataclasses.replace(
        snapshot,
        rows=rows,
        groups=groups,
        compaction_detected_count=sum(1 for row in rows if row.compaction_detected),
        data_loss_partition_count=sum(1 for row in rows if row.data_loss_detected),
        health=dataclasses.replace(health, dropped_rows=len(snapshot.rows) - len(rows)),
    )


__all__ = ["Evaluator", "Rates"]
