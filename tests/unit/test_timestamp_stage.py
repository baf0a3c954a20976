"""TimestampStage with a fake cluster port: what is read, what is cached, what is never fetched."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

import pytest

from klag_pipeline.errors import KafkaConnectionError
from klag_pipeline.events import CycleStarted, GroupsDiscovered, OffsetsFetched, WatermarksListed
from klag_pipeline.kafka.port import TimestampListing
from klag_pipeline.model import Failure, TimestampSample, TopicPartition, Watermarks
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.settings.schema import TimestampSamplingSettings
from klag_pipeline.stages.timestamps import TimestampStage

TP = TopicPartition("orders", 0)
OTHER = TopicPartition("orders", 1)


class FakeSampling:
    """Implements only ``sample_timestamps``: answers from ``records`` and records every call.

    ``records`` maps (partition, offset read) to what the broker holds there; offsets without
    an entry come back as failures. ``kafka_seconds`` is how long each call takes on the clock.
    """

    def __init__(
        self,
        clock: FakeClock,
        records: Mapping[tuple[TopicPartition, int], TimestampSample] | None = None,
        *,
        kafka_seconds: float = 0.0,
    ) -> None:
        self.clock = clock
        self.records = dict(records or {})
        self.kafka_seconds = kafka_seconds
        self.calls: list[dict[TopicPartition, set[int]]] = []
        self.unreachable = False

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        self.calls.append({tp: set(offsets) for tp, offsets in wanted.items()})
        self.clock.advance(self.kafka_seconds)
        if self.unreachable:
            raise KafkaConnectionError("connection refused", broker="127.0.0.1:1")
        samples = {}
        failures = []
        for tp, offsets in wanted.items():
            for offset in offsets:
                if (tp, offset) in self.records:
                    samples[(tp, offset)] = self.records[(tp, offset)]
                else:
                    failures.append(Failure("timestamps", f"{tp.topic}-{tp.partition}", "boom"))
        return TimestampListing(MappingProxyType(samples), tuple(failures))


def listed(
    committed: Mapping[str, Mapping[TopicPartition, int]],
    watermarks: Mapping[TopicPartition, Watermarks],
) -> WatermarksListed:
    start = CycleStarted(cluster="local", cycle=1, observed_at=0.0, started_monotonic=0.0)
    discovered = GroupsDiscovered(start, MappingProxyType({}), (), 0.0, 0.0)
    offsets = OffsetsFetched(
        discovered,
        MappingProxyType({g: MappingProxyType(dict(o)) for g, o in committed.items()}),
        (),
        0.0,
        0.0,
    )
    return WatermarksListed(offsets, MappingProxyType(dict(watermarks)), frozenset(), (), 0.0, 0.0)


def sample(offset: int, timestamp_ms: int = 1_000, missing: bool = False) -> TimestampSample:
    return TimestampSample(offset, timestamp_ms, missing)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def stage(
    client: FakeSampling, lookups: list[bool] | None = None, **settings: object
) -> TimestampStage:
    return TimestampStage(
        client,  # type: ignore[arg-type]  # a fake implementing only what the stage calls
        TimestampSamplingSettings(**settings),  # type: ignore[arg-type]
        cache_lookup=None if lookups is None else lookups.append,
        clock=client.clock,
    )


async def test_groups_at_the_same_offset_share_one_read(clock: FakeClock) -> None:
    client = FakeSampling(clock, {(TP, 5): sample(5, 500), (TP, 8): sample(8, 800)})
    lookups: list[bool] = []
    event = listed(
        {"a": {TP: 5}, "b": {TP: 5}, "c": {TP: 8}},
        {TP: Watermarks(low=0, high=10)},
    )

    result = await stage(client, lookups).process(event)

    assert client.calls == [{TP: {5, 8}}]
    assert dict(result.samples) == {(TP, 5): sample(5, 500), (TP, 8): sample(8, 800)}
    assert lookups == [False, False]
    assert result.enabled
    assert result.failures == ()
    assert result.watermarks is event


async def test_lag_zero_is_never_fetched(clock: FakeClock) -> None:
    client = FakeSampling(clock)
    event = listed({"a": {TP: 10, OTHER: 3}}, {TP: Watermarks(0, 10), OTHER: Watermarks(0, 3)})

    result = await stage(client).process(event)

    assert client.calls == []
    assert result.samples == {}


async def test_cache_serves_repeated_offsets_until_the_ttl(clock: FakeClock) -> None:
    client = FakeSampling(clock, {(TP, 5): sample(5)})
    lookups: list[bool] = []
    subject = stage(client, lookups, cache_ttl=60.0)
    event = listed({"a": {TP: 5}}, {TP: Watermarks(0, 10)})

    await subject.process(event)
    clock.advance(59)
    second = await subject.process(event)

    assert len(client.calls) == 1
    assert dict(second.samples) == {(TP, 5): sample(5)}
    assert lookups == [False, True]

    clock.advance(2)
    await subject.process(event)

    assert len(client.calls) == 2
    assert lookups == [False, True, False]


async def test_failed_reads_pass_through_and_are_not_cached(clock: FakeClock) -> None:
    client = FakeSampling(clock, {(TP, 5): sample(5)})
    subject = stage(client)
    event = listed({"a": {TP: 5, OTHER: 1}}, {TP: Watermarks(0, 10), OTHER: Watermarks(0, 4)})

    first = await subject.process(event)
    second = await subject.process(event)

    assert dict(first.samples) == {(TP, 5): sample(5)}
    assert first.failures == (Failure("timestamps", "orders-1", "boom"),)
    assert client.calls[1] == {OTHER: {1}}
    assert second.failures == first.failures


async def test_below_the_log_start_the_earliest_record_is_read_for_the_committed_offset(
    clock: FakeClock,
) -> None:
    # The record at 10 is the log start; retention removed 2..9.
    client = FakeSampling(clock, {(TP, 10): sample(10, 7_000, missing=True)})
    event = listed({"lost": {TP: 2}, "fine": {TP: 10}}, {TP: Watermarks(low=10, high=20)})

    result = await stage(client).process(event)

    assert client.calls == [{TP: {10}}]
    # Passed through as read; lag.py does not call it compaction once data loss is detected.
    assert dict(result.samples) == {
        (TP, 2): sample(10, 7_000, missing=True),
        (TP, 10): sample(10, 7_000, missing=True),
    }


async def test_unknown_low_reads_the_committed_offset(clock: FakeClock) -> None:
    client = FakeSampling(clock, {(TP, 2): sample(2)})

    result = await stage(client).process(listed({"a": {TP: 2}}, {TP: Watermarks(None, 20)}))

    assert client.calls == [{TP: {2}}]
    assert dict(result.samples) == {(TP, 2): sample(2)}


async def test_nothing_to_read_when_every_record_is_deleted(clock: FakeClock) -> None:
    client = FakeSampling(clock)

    result = await stage(client).process(listed({"a": {TP: 2}}, {TP: Watermarks(10, 10)}))

    assert client.calls == []
    assert result.samples == {}


async def test_partition_without_watermarks_is_skipped(clock: FakeClock) -> None:
    client = FakeSampling(clock, {(TP, 1): sample(1)})

    result = await stage(client).process(listed({"a": {TP: 1, OTHER: 1}}, {TP: Watermarks(0, 5)}))

    assert client.calls == [{TP: {1}}]
    assert set(result.samples) == {(TP, 1)}


@pytest.mark.parametrize("settings", [{"enabled": False}, {"mode": "rate"}])
async def test_disabled_sampling_and_rate_mode_never_fetch(
    clock: FakeClock, settings: dict[str, object]
) -> None:
    # Rate mode estimates time lag from watermarks in the evaluation stage: no Fetch at all,
    # and no exact time-lag families (``enabled`` False in the event).
    client = FakeSampling(clock, {(TP, 1): sample(1)})

    result = await stage(client, **settings).process(listed({"a": {TP: 1}}, {TP: Watermarks(0, 5)}))

    assert client.calls == []
    assert not result.enabled
    assert result.samples == {}


async def test_unreachable_cluster_is_a_failure_not_a_lost_cycle(clock: FakeClock) -> None:
    client = FakeSampling(clock)
    client.unreachable = True

    result = await stage(client).process(listed({"a": {TP: 1}}, {TP: Watermarks(0, 5)}))

    assert result.samples == {}
    assert [(f.stage, f.target) for f in result.failures] == [("timestamps", "local")]
    assert "connection refused" in result.failures[0].error


async def test_kafka_seconds_and_observed_at_come_from_the_clock(clock: FakeClock) -> None:
    client = FakeSampling(clock, {(TP, 1): sample(1)}, kafka_seconds=2.5)

    result = await stage(client).process(listed({"a": {TP: 1}}, {TP: Watermarks(0, 5)}))

    assert result.kafka_seconds == 2.5
    assert result.observed_at == clock.time()


async def test_end_of_log_sample_is_cached_only_while_the_log_ends_there(clock: FakeClock) -> None:
    # Committed on the trailing transaction marker at 3: nothing but the marker before the end.
    caught_up = TimestampSample(4, 0, end_of_log=True)
    client = FakeSampling(clock, {(TP, 3): caught_up})
    subject = stage(client, cache_ttl=600.0)

    first = await subject.process(listed({"a": {TP: 3}}, {TP: Watermarks(0, 4)}))
    again = await subject.process(listed({"a": {TP: 3}}, {TP: Watermarks(0, 4)}))
    assert dict(first.samples) == dict(again.samples) == {(TP, 3): caught_up}
    assert len(client.calls) == 1

    # A record appended after the marker: the cached "end of log" is wrong now; read again.
    client.records[(TP, 3)] = sample(4, 9_000)
    moved = await subject.process(listed({"a": {TP: 3}}, {TP: Watermarks(0, 5)}))
    assert dict(moved.samples) == {(TP, 3): sample(4, 9_000)}
    assert len(client.calls) == 2
