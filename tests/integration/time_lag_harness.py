"""Running real exporter cycles against the test broker and reading what they report.

Shared by the time-lag integration tests: one cycle through ``collect_once`` (or several through
the long-lived :class:`~klag_pipeline.app.Exporter`) with every broker request counted, and the
snapshot's Prometheus rendering parsed back into samples.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from klag_pipeline.app import Exporter, default_client_factory
from klag_pipeline.commands.once import collect_once
from klag_pipeline.kafka.port import ClusterClient, RequestObserver
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    PerformanceSettings,
    Settings,
    TimestampSamplingSettings,
)
from klag_pipeline.sinks.prometheus import render_snapshots
from klag_pipeline.snapshot import ClusterSnapshot, PartitionRow, SinkUpdate
from tests.support.kafka import KafkaTestClient, Rec, wait_until

CLUSTER = "timelag"
LAG_SECONDS = "kafka_consumergroup_group_lag_seconds"
MAX_LAG_SECONDS = "kafka_consumergroup_group_max_lag_seconds"
# Wall-clock slack on top of the cycle's own duration (SPEC: within 1 s + cycle duration).
SLACK_SECONDS = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


def settings_for(
    bootstrap: str,
    *,
    groups: Iterable[str],
    topics: Iterable[str],
    sampling: TimestampSamplingSettings | None = None,
    consumer_properties: Mapping[str, str] | None = None,
    poll_interval: float = 10.0,
) -> Settings:
    """Settings that see exactly ``groups`` and ``topics`` of the shared test broker."""

    def exactly(names: Iterable[str]) -> tuple[re.Pattern[str], ...]:
        return (re.compile("^(" + "|".join(re.escape(n) for n in names) + ")$"),)

    return Settings(
        exporter=ExporterSettings(
            poll_interval=poll_interval,
            staleness_threshold=max(60.0, 3 * poll_interval),
            timestamp_sampling=sampling or TimestampSamplingSettings(),
            performance=PerformanceSettings(kafka_timeout=10.0),
        ),
        clusters=(
            ClusterSettings(
                name=CLUSTER,
                bootstrap_servers=(bootstrap,),
                group_whitelist=exactly(groups),
                topic_whitelist=exactly(topics),
                consumer_properties=dict(consumer_properties or {}),
            ),
        ),
    )


@dataclass
class CountingObserver:
    """Records every broker request the client under test makes, then tells ``inner``."""

    inner: RequestObserver | None = None
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        self.requests.append((api, broker, outcome))
        if self.inner is not None:
            self.inner.on_request(api, broker, outcome, seconds)

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        if self.inner is not None:
            self.inner.on_throttle(api, broker, throttle_ms)

    @property
    def fetches(self) -> int:
        return sum(1 for api, _, _ in self.requests if api == "Fetch")


Wrap = Callable[[ClusterClient], ClusterClient]


def counting_factory(
    observer: CountingObserver, wrap: Wrap | None = None
) -> Callable[[ClusterSettings, ExporterSettings, RequestObserver], ClusterClient]:
    """A client factory building the real aiokafka client, observed by ``observer``."""

    def factory(
        cluster: ClusterSettings, exporter: ExporterSettings, inner: RequestObserver
    ) -> ClusterClient:
        observer.inner = inner
        client = default_client_factory(cluster, exporter, observer)
        return wrap(client) if wrap is not None else client

    return factory


Series = dict[str, list[tuple[dict[str, str], float]]]


def exposition(snapshot: ClusterSnapshot) -> Series:
    """The snapshot as Prometheus would scrape it, parsed back: family → [(labels, value)]."""
    text = render_snapshots([snapshot], "partition")
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return series


def values(series: Series, name: str, **labels: str | int) -> list[float]:
    """Values of ``name`` whose labels include ``labels``."""
    wanted = {key: str(value) for key, value in labels.items()}
    return [
        value
        for have, value in series.get(name, [])
        if all(have.get(k) == v for k, v in wanted.items())
    ]


def one_value(series: Series, name: str, **labels: str | int) -> float:
    found = values(series, name, **labels)
    assert len(found) == 1, f"{name}{labels}: expected one sample, found {found}"
    return found[0]


def flags(series: Series, group: str, topic: str, partition: int) -> tuple[str, str]:
    """(compaction_detected, data_loss_detected) labels of the partition's lag_seconds series."""
    matches = [
        have
        for have, _ in series.get(LAG_SECONDS, [])
        if (have["group"], have["topic"], have["partition"]) == (group, topic, str(partition))
    ]
    assert len(matches) == 1, f"lag_seconds of {group} {topic}-{partition}: {matches}"
    return matches[0]["compaction_detected"], matches[0]["data_loss_detected"]


@dataclass
class Cycle:
    """One finished cycle: its snapshot, when it ran (unix seconds) and the requests it made."""

    snapshot: ClusterSnapshot
    started: float
    finished: float
    requests: list[tuple[str, str, str]]

    @property
    def fetches(self) -> int:
        return sum(1 for api, _, _ in self.requests if api == "Fetch")

    def row(self, group: str, topic: str, partition: int = 0) -> PartitionRow:
        return row_of(self.snapshot, group, topic, partition)

    def series(self) -> Series:
        return exposition(self.snapshot)

    def exposition_text(self) -> str:
        return render_snapshots([self.snapshot], "partition")

    def assert_age(self, reported: float | None, timestamp_ms: int, what: str = "") -> None:
        """``reported`` is now − ``timestamp_ms`` for some "now" during this cycle, ± 1 s."""
        assert reported is not None, f"{what}: no lag_seconds"
        earliest = self.started - timestamp_ms / 1000 - SLACK_SECONDS
        latest = self.finished - timestamp_ms / 1000 + SLACK_SECONDS
        assert earliest <= reported <= latest, (
            f"{what}: lag_seconds {reported:.3f} outside [{earliest:.3f}, {latest:.3f}]"
        )


async def run_cycle(settings: Settings, *, wrap: Wrap | None = None) -> Cycle:
    """One full cycle through ``collect_once`` with the real aiokafka client."""
    observer = CountingObserver()
    started = time.time()
    snapshots, errors = await collect_once(
        settings, client_factory=counting_factory(observer, wrap)
    )
    finished = time.time()
    assert errors == [], errors
    (snapshot,) = snapshots
    return Cycle(snapshot, started, finished, list(observer.requests))


class RecordingSink:
    """Keeps every snapshot the exporter publishes."""

    name = "recording"

    def __init__(self) -> None:
        self.snapshots: list[ClusterSnapshot] = []
        self._changed = asyncio.Event()

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        async for update in inbox:
            if isinstance(update, ClusterSnapshot):
                self.snapshots.append(update)
                self._changed.set()

    async def wait_for(self, count: int, within: float) -> None:
        async with asyncio.timeout(within):
            while len(self.snapshots) < count:
                self._changed.clear()
                await self._changed.wait()


async def run_exporter(
    settings: Settings, cycles: int, *, wrap: Wrap | None = None, within: float = 60.0
) -> tuple[list[ClusterSnapshot], CountingObserver]:
    """Run the long-lived exporter until it has published ``cycles`` snapshots."""
    observer = CountingObserver()
    recorder = RecordingSink()
    exporter = Exporter(
        settings, client_factory=counting_factory(observer, wrap), extra_sinks=[recorder]
    )
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=15.0))
    try:
        await recorder.wait_for(cycles, within)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
        await exporter.close_clients()
    return recorder.snapshots[:cycles], observer


def row_of(snapshot: ClusterSnapshot, group: str, topic: str, partition: int = 0) -> PartitionRow:
    for row in snapshot.rows:
        if (row.group, row.topic, row.partition) == (group, topic, partition):
            return row
    raise AssertionError(f"no row for {group} {topic}-{partition}")


# Upper bound for the log cleaner to compact a topic in the session broker (cleaner backoff
# 500 ms, see TEST_BROKER_PROPERTIES): generous on a loaded 2-core machine.
COMPACTION_WITHIN_SECONDS = 60.0


async def compacted_topic(kafka: KafkaTestClient, topic: str, base_ms: int) -> list[int]:
    """A compacted topic holding keys k0-k4 at offsets 0-4, then the same keys at 5-9, 100 s
    apart from ``base_ms`` on: the cleaner may drop 0-4. Returns the ten timestamps."""
    await kafka.create_topic(
        topic,
        config={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
            "delete.retention.ms": "100",
        },
    )
    stamps = [base_ms + i * 100_000 for i in range(10)]
    offsets = await kafka.produce(
        topic, [Rec(b"v", key=b"k%d" % (i % 5), timestamp_ms=ts) for i, ts in enumerate(stamps)]
    )
    assert offsets == list(range(10))
    return stamps


async def wait_cleaned(kafka: KafkaTestClient, topic: str) -> tuple[int, set[int]]:
    """Until a plain consumer sees offsets 0-4 of :func:`compacted_topic` gone. The cleaner never
    touches the active segment: appends after segment.ms roll it. Returns (records appended,
    surviving offsets)."""
    survivors: set[int] = set()
    rolls = 0

    async def cleaned_up() -> bool:
        nonlocal rolls, survivors
        survivors = set(await kafka.read_timestamps(topic, 0, 0))
        if survivors & set(range(5)):
            await kafka.produce(topic, [Rec(b"r", key=b"roll-%d" % rolls)])
            rolls += 1
            return False
        return True

    await wait_until(
        cleaned_up,
        within=COMPACTION_WITHIN_SECONDS,
        interval=0.5,
        message=f"the log cleaner removing offsets 0-4 of {topic}",
    )
    return rolls, survivors
