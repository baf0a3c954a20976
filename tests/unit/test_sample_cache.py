"""The timestamp cache's rules of trust (klag_pipeline/stages/sample_cache.py), one by one.

The real-broker side of the same rules (retention, a re-created topic, the log cleaner) is in
tests/integration/test_timestamp_cache.py.
"""

from __future__ import annotations

from klag_pipeline.model import TimestampSample, TopicIdentity, TopicPartition, Watermarks
from klag_pipeline.stages.sample_cache import SampleCache

TP = TopicPartition("t", 0)
ID_A, ID_B = b"a" * 16, b"b" * 16
PLAIN = {"t": TopicIdentity(ID_A, compacted=False)}
SAMPLE = TimestampSample(offset=5, timestamp_ms=1_000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cache(recheck_after: float = 60.0, maxsize: int = 100) -> tuple[SampleCache, Clock]:
    clock = Clock()
    return SampleCache(recheck_after=recheck_after, maxsize=maxsize, monotonic=clock), clock


def marks(low: int | None = 0, high: int = 10) -> Watermarks:
    return Watermarks(low=low, high=high)


def cached(subject: SampleCache, mark: Watermarks, offset: int = 5) -> TimestampSample | None:
    return subject.get(TP, offset, mark)


def test_a_sample_on_a_delete_policy_topic_never_expires_while_nothing_changes() -> None:
    subject, clock = cache(recheck_after=60.0)
    subject.observe({TP: marks()}, PLAIN)
    subject.put(TP, 5, SAMPLE)
    for step in range(1, 5):
        clock.now = step * 3_600.0
        assert subject.observe({TP: marks(high=10 + step)}, PLAIN) == 0
        assert cached(subject, marks(high=10 + step)) == SAMPLE


def test_compacted_or_unknown_policy_is_read_again_after_recheck_after() -> None:
    for identity in (TopicIdentity(ID_A, compacted=True), TopicIdentity(ID_A, compacted=None)):
        subject, clock = cache(recheck_after=60.0)
        subject.observe({TP: marks()}, {"t": identity})
        subject.put(TP, 5, SAMPLE)
        clock.now = 59.0
        assert cached(subject, marks()) == SAMPLE
        clock.now = 60.0
        assert cached(subject, marks()) is None, identity
    # No identity at all (a client that reports none) is "unknown" too.
    subject, clock = cache(recheck_after=60.0)
    subject.observe({TP: marks()}, {})
    subject.put(TP, 5, SAMPLE)
    clock.now = 61.0
    assert cached(subject, marks()) is None


def test_a_new_topic_id_drops_the_partitions_entries() -> None:
    subject, _ = cache()
    subject.observe({TP: marks()}, PLAIN)
    subject.put(TP, 5, SAMPLE)
    # Same offsets, so only the id can tell.
    assert subject.observe({TP: marks()}, {"t": TopicIdentity(ID_B, False)}) == 1
    assert cached(subject, marks()) is None
    # An answer without an id (metadata not refreshed this cycle) keeps the last known id.
    subject.put(TP, 5, SAMPLE)
    assert subject.observe({TP: marks()}, {"t": TopicIdentity(None, False)}) == 0
    assert cached(subject, marks()) == SAMPLE


def test_offsets_going_backwards_drop_the_partitions_entries() -> None:
    for after in (marks(low=3, high=9), marks(low=2, high=12)):
        subject, _ = cache()
        subject.observe({TP: marks(low=3, high=10)}, PLAIN)
        subject.put(TP, 5, SAMPLE)
        assert subject.observe({TP: after}, PLAIN) == 1, after
        assert cached(subject, after) is None
    # An unknown low (its lookup failed) says nothing.
    subject, _ = cache()
    subject.observe({TP: marks(low=3)}, PLAIN)
    subject.put(TP, 5, SAMPLE)
    assert subject.observe({TP: marks(low=None)}, PLAIN) == 0
    assert subject.observe({TP: marks(low=3)}, PLAIN) == 0
    assert cached(subject, marks(low=3)) == SAMPLE


def test_a_partition_missing_from_one_listing_starts_again() -> None:
    subject, _ = cache()
    other = TopicPartition("u", 0)
    subject.observe({TP: marks(), other: marks()}, PLAIN)
    subject.put(TP, 5, SAMPLE)
    subject.put(other, 5, SAMPLE)
    subject.observe({other: marks()}, PLAIN)  # t deleted (or not listed)
    subject.observe({TP: marks(), other: marks()}, PLAIN)  # a new t with the same offsets
    assert cached(subject, marks()) is None
    assert subject.get(other, 5, marks()) == SAMPLE


def test_end_of_log_sample_holds_only_while_the_log_ends_there() -> None:
    subject, _ = cache()
    subject.observe({TP: marks(high=10)}, PLAIN)
    at_end = TimestampSample(offset=10, timestamp_ms=0, end_of_log=True)
    subject.put(TP, 7, at_end)
    assert cached(subject, marks(high=10), offset=7) == at_end
    assert cached(subject, marks(high=11), offset=7) is None


def test_zero_recheck_after_caches_nothing_and_the_bound_holds() -> None:
    subject, _ = cache(recheck_after=0.0)
    subject.observe({TP: marks()}, PLAIN)
    subject.put(TP, 5, SAMPLE)
    assert cached(subject, marks()) is None
    bounded, _ = cache(maxsize=3)
    bounded.observe({TP: marks(high=100)}, PLAIN)
    for offset in range(10):
        bounded.put(TP, offset, SAMPLE)
    assert len(bounded) == 3
    assert bounded.get(TP, 9, marks(high=100)) == SAMPLE
    assert bounded.get(TP, 0, marks(high=100)) is None


def test_lookups_before_any_listing_miss() -> None:
    subject, _ = cache()
    subject.put(TP, 5, SAMPLE)
    assert cached(subject, marks()) is None
