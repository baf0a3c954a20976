"""Estimated time lag from a partition's high-watermark history (pure: no I/O, no asyncio).

Where the record at a committed offset cannot be read (``mode = "rate"``, or Fetch denied on
the topic) its produce time is interpolated from when the high watermark passed it: the high
watermark ``h`` observed at ``t`` says offsets below ``h`` existed by ``t``, so the record at
offset ``o`` was written when the high watermark went from ``o`` to ``o + 1``. Between two
observations records are assumed evenly spread in time (linear interpolation). An offset older
than the oldest observation is *unknown* (None): there is no extrapolation, so a long-idle
partition never reads as "years" of lag the way a rate-only estimate does.

Memory: at most ``max_points`` (time, high) pairs per partition, in two flat arrays (16 bytes a
point). When full, every other point is dropped, newest and oldest kept: the timeline keeps its span
at half the resolution, and recent history (appended since) stays denser than old history.
Points older than ``max_age`` are dropped; a partition a snapshot no longer contains is dropped
with all its points.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from klag_pipeline.model import TopicPartition


class Timeline:
    """(observed_at, high watermark) points of one partition, oldest first; highs never fall."""

    __slots__ = ("_highs", "_max_age", "_max_points", "_times")

    def __init__(self, max_points: int, max_age: float) -> None:
        if max_points < 2:
            raise ValueError("a timeline needs at least two points to interpolate")
        self._max_points = max_points
        self._max_age = max_age
        self._times = array("d")
        self._highs = array("q")

    def __len__(self) -> int:
        return len(self._times)

    def points(self) -> list[tuple[float, int]]:
        return list(zip(self._times, self._highs, strict=True))

    def observe(self, at: float, high: int) -> None:
        """Add one observation; a repeated or older ``at`` is ignored (a carried snapshot)."""
        if self._times and at <= self._times[-1]:
            return
        if self._highs and high < self._highs[-1]:
            # The log was truncated or recreated: the old points describe another log.
            self._times = array("d")
            self._highs = array("q")
        self._times.append(at)
        self._highs.append(high)
        if len(self._times) > self._max_points:
            # Keep the newest, every other one before it, and the oldest (the span).
            start = (len(self._times) - 1) % 2
            self._times = self._times[:start] + self._times[start::2]
            self._highs = self._highs[:start] + self._highs[start::2]
        old = bisect_left(self._times, at - self._max_age)  # points older than max_age
        if old:
            del self._times[:old]
            del self._highs[:old]

    def produce_time(self, offset: int) -> float | None:
        """When the record at ``offset`` was written, interpolated; None when it predates the
        oldest point (or nothing was observed). At or above the latest high: the latest time."""
        if not self._times:
            return None
        after = bisect_right(self._highs, offset)  # first point whose high is above offset
        if after == len(self._highs):
            return self._times[-1]
        if after == 0:
            return None
        t0, h0 = self._times[after - 1], self._highs[after - 1]
        t1, h1 = self._times[after], self._highs[after]
        return t0 + (offset + 1 - h0) / (h1 - h0) * (t1 - t0)

    def lag_seconds(self, offset: int, now: float) -> float | None:
        """``now`` − the produce time of ``offset``, at least 0; None where unknown."""
        produced = self.produce_time(offset)
        return None if produced is None else max(0.0, now - produced)


class Timelines:
    """One :class:`Timeline` per partition of the snapshots fed to it."""

    def __init__(self, max_points: int, max_age: float) -> None:
        self._max_points = max_points
        self._max_age = max_age
        self._by_tp: dict[TopicPartition, Timeline] = {}

    def __len__(self) -> int:
        return len(self._by_tp)

    def observe(self, at: float, highs: Iterable[tuple[TopicPartition, int]]) -> None:
        """Every partition of one snapshot; partitions it does not name are forgotten."""
        present: set[TopicPartition] = set()
        for tp, high in highs:
            present.add(tp)
            timeline = self._by_tp.get(tp)
            if timeline is None:
                timeline = self._by_tp[tp] = Timeline(self._max_points, self._max_age)
            timeline.observe(at, high)
        for tp in self._by_tp.keys() - present:
            del self._by_tp[tp]

    def get(self, tp: TopicPartition) -> Timeline | None:
        return self._by_tp.get(tp)


__all__ = ["Timeline", "Timelines"]
