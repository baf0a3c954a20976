"""Timestamps of the records at lagging committed offsets: the input of time lag (SPEC §5).

For every group × partition with lag > 0 the stage reads the record at the committed offset —
or, when retention already removed it (committed < low), the earliest surviving record, which
makes the time lag a lower bound. Many groups at one offset cost one read, and a read is kept
until it can have changed (:mod:`.sample_cache`): a steady cycle reads only the offsets that
moved. Partitions with lag 0 are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from klag_pipeline.errors import KafkaError
from klag_pipeline.events import TimestampsSampled, WatermarksListed
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.model import Failure, TimestampSample, TopicPartition
from klag_pipeline.pipeline.clock import SYSTEM_CLOCK, TimeSource
from klag_pipeline.pipeline.paced import paced
from klag_pipeline.settings.schema import TimestampSamplingSettings
from klag_pipeline.stages.sample_cache import SampleCache

DEFAULT_CACHE_SIZE = 100_000
"""(partition, offset) entries kept at most; beyond it the least recently used go first
(about 44 MB at the bound, docs/time-lag.md#cache)."""


CacheLookup = Callable[[bool], None]
"""Told ``True`` for a cache hit, ``False`` for a miss, once per distinct (partition, offset)."""


class TimestampStage:
    """``WatermarksListed`` → ``TimestampsSampled`` for one cluster (the cache is per cluster)."""

    name = "timestamps"

    def __init__(
        self,
        client: ClusterClient,
        settings: TimestampSamplingSettings,
        *,
        cache_lookup: CacheLookup | None = None,
        clock: TimeSource = SYSTEM_CLOCK,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._client = client
        self._settings = settings
        self._cache_lookup = cache_lookup
        self._clock = clock
        self._cache = SampleCache(
            recheck_after=settings.cache_ttl, maxsize=cache_size, monotonic=clock.monotonic
        )

    async def process(self, event: WatermarksListed) -> TimestampsSampled:
        started = self._clock.monotonic()
        # Rate mode estimates time lag from the watermark history instead (health/estimate.py):
        # no Fetch at all, and no exact time-lag families, as when sampling is off.
        if not self._settings.enabled or self._settings.mode == "rate":
            return TimestampsSampled(
                watermarks=event,
                samples=MappingProxyType({}),
                enabled=False,
                failures=(),
                kafka_seconds=0.0,
                observed_at=self._clock.time(),
            )
        reads = await _offsets_to_read(event)
        found: dict[tuple[TopicPartition, int], TimestampSample] = {}
        misses: dict[TopicPartition, set[int]] = {}
        self._cache.observe(event.watermarks, event.topics)
        for key in sorted(set(reads.values())):
            cached = self._cache.get(key[0], key[1], event.watermarks[key[0]])
            if self._cache_lookup is not None:
                self._cache_lookup(cached is not None)
            if cached is not None:
                found[key] = cached
            else:
                misses.setdefault(key[0], set()).add(key[1])
        failures: tuple[Failure, ...] = ()
        if misses:
            try:
                listing = await self._client.sample_timestamps(misses)
            except KafkaError as exc:
                # Offset lag is still worth exporting: this cycle just has no time lag.
                failures = (Failure(stage=self.name, target=event.cluster, error=str(exc)),)
            else:
                failures = listing.failures
                for key, sample in listing.samples.items():
                    self._cache.put(key[0], key[1], sample)
                    found[key] = sample
        kafka_seconds = self._clock.monotonic() - started
        samples: dict[tuple[TopicPartition, int], TimestampSample] = {}
        async for lagging, read in paced(reads.items(), 2_000):
            hit = found.get(read)
            if hit is not None:
                samples[lagging] = hit
        return TimestampsSampled(
            watermarks=event,
            samples=MappingProxyType(samples),
            enabled=True,
            failures=failures,
            kafka_seconds=kafka_seconds,
            observed_at=self._clock.time(),
        )


async def _offsets_to_read(
    event: WatermarksListed,
) -> dict[tuple[TopicPartition, int], tuple[TopicPartition, int]]:
    """(partition, committed) of every lagging commit → (partition, offset to read)."""
    reads: dict[tuple[TopicPartition, int], tuple[TopicPartition, int]] = {}
    async for offsets in paced(event.offsets.committed.values()):
        for tp, committed in offsets.items():
            marks = event.watermarks.get(tp)
            if marks is None or committed >= marks.high:
                continue
            # Below the log start the record is gone (retention): the earliest survivor is
            # the best lower bound. An unknown low says nothing about loss: read as committed.
            read = committed if marks.low is None or committed >= marks.low else marks.low
            if read >= marks.high:
                continue  # every record deleted: nothing to read
            reads[(tp, committed)] = (tp, read)
    return reads


__all__ = ["DEFAULT_CACHE_SIZE", "CacheLookup", "TimestampStage"]
