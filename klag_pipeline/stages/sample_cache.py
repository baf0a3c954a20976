"""The timestamp cache: what the record at (partition, offset) said, for as long as it holds.

The record at an offset never changes while it exists, so a sample is kept until one of these
says otherwise (docs/time-lag.md#cache):

- **retention** moved the log start past the offset: reads then start at the log start, so the
  old entry is simply never asked for again and ages out of the LRU bound;
- the topic was **re-created** (its Metadata topic id changed) or the partition's offsets went
  **backwards** (a re-created topic seen before its new id, or a truncation): every entry of the
  partition is dropped at once, by giving the partition a new generation in the key;
- the topic may be **compacted** (cleanup.policy includes ``compact``, or the policy is unknown):
  the log cleaner can remove a record later, so its samples are re-read after ``recheck_after``
  seconds (``timestamp_sampling.cache_ttl``);
- an **end-of-log** sample (only transaction markers up to the log end) holds only while the log
  ends there.

The cache holds at most ``maxsize`` entries (least recently used go first) and one small record
per partition of the topics in the last listing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import count

from cachetools import LRUCache

from klag_pipeline.model import TimestampSample, TopicIdentity, TopicPartition, Watermarks


@dataclass(slots=True)
class _Partition:
    generation: int
    topic_id: bytes | None
    low: int | None
    high: int
    compacted: bool | None


_Key = tuple[TopicPartition, int, int]  # (partition, generation, offset)


class SampleCache:
    def __init__(
        self, *, recheck_after: float, maxsize: int, monotonic: Callable[[], float]
    ) -> None:
        self._recheck_after = recheck_after
        self._monotonic = monotonic
        self._store: LRUCache[_Key, tuple[TimestampSample, float]] = LRUCache(maxsize=maxsize)
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._generations = count()

    def __len__(self) -> int:
        return len(self._store)

    def observe(
        self,
        watermarks: Mapping[TopicPartition, Watermarks],
        topics: Mapping[str, TopicIdentity],
    ) -> int:
        """Take this cycle's watermarks and topic identities (before any lookup); returns how
        many partitions lost their entries (re-created topic, offsets gone backwards)."""
        dropped = 0
        seen: dict[TopicPartition, _Partition] = {}
        unknown = TopicIdentity(None, None)
        for tp, marks in watermarks.items():
            identity = topics.get(tp.topic, unknown)
            before = self._partitions.get(tp)
            if before is None:
                # Never seen, or absent from the last listing: a fresh generation, so nothing
                # cached for an earlier life of this partition can be found again.
                seen[tp] = _Partition(
                    next(self._generations), identity.topic_id, marks.low, marks.high, None
                )
            elif _replaced(before, identity, marks):
                before.generation = next(self._generations)
                dropped += 1
            if before is not None:
                seen[tp] = before
                if identity.topic_id is not None:
                    before.topic_id = identity.topic_id
                if marks.low is not None:
                    before.low = marks.low
                before.high = marks.high
            seen[tp].compacted = identity.compacted
        self._partitions = seen
        return dropped

    def get(self, tp: TopicPartition, offset: int, marks: Watermarks) -> TimestampSample | None:
        """The sample for ``offset``, or None when it must be read (again)."""
        partition = self._partitions.get(tp)
        if partition is None:
            return None
        key = (tp, partition.generation, offset)
        entry = self._store.get(key)
        if entry is None:
            return None
        sample, read_at = entry
        stale = (
            # "Nothing but markers up to the end of the log" holds only while the log ends
            # there; new records after the markers are the group's next record.
            (sample.end_of_log and marks.high != sample.offset)
            # The log cleaner may have removed the record since: read it again.
            or (
                partition.compacted is not False
                and self._monotonic() - read_at >= self._recheck_after
            )
        )
        if stale:
            del self._store[key]
            return None
        return sample

    def put(self, tp: TopicPartition, offset: int, sample: TimestampSample) -> None:
        partition = self._partitions.get(tp)
        if partition is not None and self._recheck_after > 0:
            self._store[(tp, partition.generation, offset)] = (sample, self._monotonic())


def _replaced(before: _Partition, identity: TopicIdentity, marks: Watermarks) -> bool:
    """Whether the records cached for this partition may no longer be the ones at their offsets."""
    if identity.topic_id is not None and before.topic_id not in (None, identity.topic_id):
        return True
    if marks.high < before.high:
        return True
    return marks.low is not None and before.low is not None and marks.low < before.low


__all__ = ["SampleCache"]
