"""The evaluator's observations in compact form (no I/O, no asyncio).

Every row of a snapshot is observed at the same time (its ``observed_at``), so a history stores
the cycle's number, and :class:`Timeline` maps numbers to times once for all rows. A row's
observations are one flat ``array('q')`` — ``cycle, committed, high, lag`` per observation,
oldest first — instead of a list of tuples: 32 bytes an observation and no int objects, where a
tuple cost 72 bytes plus the ints of values that moved. At the ``large`` preset (20,000 rows, 16
observations each) the evaluator holds ~0.9 KB per row instead of ~1.9 KB.

The rules (:mod:`klag_pipeline.health.rules`) read a window by its two ends
(:func:`first_point`, :func:`last_point`), and for the trend rule by
:meth:`Timeline.grew_beyond_noise`, which reads the same thing from the flat array as the rules'
own ``_grew_beyond_noise`` from a sequence of points.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from klag_pipeline.health.rules import Point, Rewind
from klag_pipeline.model import TopicPartition
from klag_pipeline.snapshot import PartitionOffsets

STRIDE = 4
"""Values per observation in a row's array: cycle, committed, high, lag (the judged one)."""
HIGH_STRIDE = 2
"""Values per observation in a partition's high-watermark array: cycle, high."""


@dataclass(slots=True)
class RowHistory:
    """One (group, topic, partition) row's memory."""

    values: array[int]  # STRIDE values per observation, oldest first, at most the window's
    first_seen: float
    key: tuple[str, TopicPartition]  # its key in ClusterHealth.partitions, reused every cycle
    last_moved: float | None = None
    rewind: Rewind | None = None  # the last backward step of the committed offset


def new_values() -> array[int]:
    return array("q")


class Timeline:
    """Cycle number → observed time, for the cycles some history still refers to."""

    __slots__ = ("_trim_at", "cycle", "times")

    def __init__(self, trim_every: int) -> None:
        self.times: dict[int, float] = {}
        self.cycle = 0
        self._trim_at = trim_every

    def start(self, now: float) -> int:
        """A new cycle observed at ``now``: its number."""
        self.cycle += 1
        self.times[self.cycle] = now
        return self.cycle

    def trim(self, histories: Iterable[array[int]], trim_every: int) -> None:
        """Forget the times no history refers to any more: each history's oldest cycle bounds
        what it refers to. Walks the histories only once every ``trim_every`` cycles kept, so
        the table holds about the window's cycles plus ``trim_every``."""
        times = self.times
        if len(times) < self._trim_at:
            return
        oldest = min((values[0] for values in histories if values), default=self.cycle)
        for cycle in [c for c in times if c < oldest]:
            del times[cycle]
        self._trim_at = len(times) + trim_every

    def grew_beyond_noise(self, values: array[int]) -> bool:
        """The trend rule (rules.py ``_grew_beyond_noise``) over a row's array: every lag of the
        window's later half is above every lag of its earlier half (halves by time)."""
        times = self.times
        middle = (times[values[0]] + times[values[-STRIDE]]) / 2
        early_max = -1
        late_min: int | None = None
        for i in range(0, len(values), STRIDE):
            lag = values[i + 3]
            if times[values[i]] <= middle:
                early_max = max(early_max, lag)
            elif late_min is None or lag < late_min:
                late_min = lag
        return late_min is not None and late_min > early_max


def first_point(values: array[int], times: dict[int, float]) -> Point:
    """A row's oldest observation as the rules read it."""
    return (times[values[0]], values[1], values[2], values[3])


def last_point(values: array[int], times: dict[int, float]) -> Point:
    """A row's newest observation as the rules read it."""
    return (times[values[-4]], values[-3], values[-2], values[-1])


class HighWatermarks:
    """Per partition, its high watermarks of the window (the last ``max_samples``, as from a
    bounded deque: the oldest goes when full) for the produce rate of the P label set."""

    __slots__ = ("_full", "_histories", "_timeline", "_window")

    def __init__(self, timeline: Timeline, window: float, max_samples: int) -> None:
        self._timeline = timeline
        self._window = window
        self._full = max_samples * HIGH_STRIDE
        self._histories: dict[TopicPartition, array[int]] = {}

    def histories(self) -> Iterable[array[int]]:
        return self._histories.values()

    def rates(
        self, partitions: Iterable[PartitionOffsets], now: float, cycle: int
    ) -> dict[TopicPartition, float]:
        """Add this cycle's high watermarks (``cycle`` observed at ``now``); the produce rate
        over the window of each partition with two observations at different times. Partitions
        not in ``partitions`` are forgotten."""
        produce: dict[TopicPartition, float] = {}
        present = set()
        kept = self._histories
        times = self._timeline.times
        oldest = now - self._window
        for offsets in partitions:
            tp = TopicPartition(offsets.topic, offsets.partition)
            present.add(tp)
            history = kept.get(tp)
            if history is None:
                history = kept[tp] = new_values()
            if not history or times[history[-HIGH_STRIDE]] < now:
                if len(history) == self._full:
                    del history[:HIGH_STRIDE]
                history.extend((cycle, offsets.high))
            stale = 0
            while stale < len(history) and times[history[stale]] < oldest:
                stale += HIGH_STRIDE
            if stale:
                del history[:stale]
            if len(history) >= 2 * HIGH_STRIDE:
                t0, t1 = times[history[0]], times[history[-HIGH_STRIDE]]
                if t1 > t0:
                    produce[tp] = (history[-1] - history[1]) / (t1 - t0)
        for tp in kept.keys() - present:
            del kept[tp]
        return produce
