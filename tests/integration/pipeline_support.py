"""Helpers for the end-to-end pipeline tests: settings built directly from the frozen dataclasses
(never the TOML loader), an in-process exporter run by a Runner, the exposition parsed with
prometheus_client's parser, client wrappers that fail or block on purpose, and a classic group
member driven by raw JoinGroup / SyncGroup requests so a rebalance can be held still.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import Counter
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.protocol.group import (
    JoinGroupRequest,
    LeaveGroupRequest,
    MemberAssignment,
    ProtocolMetadata,
    SyncGroupRequest,
)
from prometheus_client.parser import text_string_to_metric_families

from devtools import kafka_local
from klag_pipeline.app import ClientFactory, Exporter, default_client_factory
from klag_pipeline.errors import KafkaConnectionError
from klag_pipeline.kafka.port import (
    ClusterClient,
    ClusterOverview,
    CommittedOffsets,
    GroupDescriptions,
    GroupListing,
    RequestObserver,
    TimestampListing,
    WatermarkListing,
)
from klag_pipeline.metrics_catalog import CLUSTER_FAMILIES
from klag_pipeline.model import ListedGroup, TopicPartition
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    Granularity,
    PerformanceSettings,
    Settings,
    TimestampSamplingSettings,
)
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate

GPM_FAMILIES = frozenset(
    {
        "kafka_consumergroup_group_offset",
        "kafka_consumergroup_group_lag",
        "kafka_consumergroup_group_lag_seconds",
        "kafka_consumergroup_group_messages_lost",
        "kafka_consumergroup_group_retention_margin",
        "kafka_consumergroup_group_lag_retention_ratio",
    }
)
COMPAT_FAMILIES = frozenset({*(f.name for f in CLUSTER_FAMILIES), "kafka_lag_exporter_up"})


# -- settings -------------------------------------------------------------------------------------


def exactly(*names: str) -> re.Pattern[str]:
    """A whitelist pattern matching exactly ``names`` (the broker is shared with other tests)."""
    return re.compile("^(" + "|".join(re.escape(n) for n in names) + ")$")


def cluster(
    name: str,
    bootstrap: str,
    *,
    groups: Sequence[re.Pattern[str]] = (re.compile(".*"),),
    group_blacklist: Sequence[re.Pattern[str]] = (),
    topics: Sequence[re.Pattern[str]] = (re.compile(".*"),),
    topic_blacklist: Sequence[re.Pattern[str]] = (re.compile("^__"),),
    labels: Mapping[str, str] | None = None,
) -> ClusterSettings:
    return ClusterSettings(
        name=name,
        bootstrap_servers=(bootstrap,),
        group_whitelist=tuple(groups),
        group_blacklist=tuple(group_blacklist),
        topic_whitelist=tuple(topics),
        topic_blacklist=tuple(topic_blacklist),
        labels=MappingProxyType(dict(labels or {})),
    )


def settings(
    *clusters: ClusterSettings,
    poll_interval: float = 0.5,
    staleness_threshold: float | None = None,
    granularity: Granularity = "partition",
    kafka_timeout: float = 10.0,
    sampling: bool = True,
) -> Settings:
    return Settings(
        exporter=ExporterSettings(
            poll_interval=poll_interval,
            http_host="127.0.0.1",
            http_port=0,
            granularity=granularity,
            staleness_threshold=(
                staleness_threshold if staleness_threshold is not None else 3 * poll_interval
            ),
            timestamp_sampling=TimestampSamplingSettings(enabled=sampling, fetch_timeout=5.0),
            performance=PerformanceSettings(
                kafka_timeout=kafka_timeout, offset_fetch_timeout=kafka_timeout
            ),
        ),
        clusters=tuple(clusters),
    )


# -- exposition -----------------------------------------------------------------------------------

SeriesKey = tuple[str, frozenset[tuple[str, str]]]


def key(name: str, **labels: object) -> SeriesKey:
    """A series key; label values are compared as the exposition spells them (strings)."""
    return name, frozenset((k, str(v)) for k, v in labels.items())


def parse_exposition(
    text: str, *, only: Collection[str] = COMPAT_FAMILIES
) -> dict[SeriesKey, float]:
    """Every sample of the families in ``only``, parsed by prometheus_client; a duplicate series
    is an error (the exposition would be invalid)."""
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in only:
                continue
            series_key = (sample.name, frozenset(sample.labels.items()))
            assert series_key not in out, f"duplicate series {series_key}"
            out[series_key] = sample.value
    return out


def scrape(exporter: Exporter) -> dict[SeriesKey, float]:
    """The compatibility families ``/metrics`` would serve right now."""
    body, _, _ = exporter.prometheus.render(None, None)
    return parse_exposition(body.decode())


def labels_of(series: Mapping[SeriesKey, float], name: str) -> list[dict[str, str]]:
    return [dict(labels) for (family, labels) in series if family == name]


def of_cluster(series: Mapping[SeriesKey, float], cluster_name: str) -> dict[SeriesKey, float]:
    return {k: v for k, v in series.items() if ("cluster_name", cluster_name) in k[1]}


def mentioning(series: Mapping[SeriesKey, float], label: str, value: str) -> list[SeriesKey]:
    return [k for k in series if (label, value) in k[1]]


def self_metric(exporter: Exporter, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """One ``klag_pipeline_*`` sample name → {labels: value}."""
    text = exporter.self_metrics.render(openmetrics=False).decode()
    out: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[frozenset(sample.labels.items())] = sample.value
    return out


# -- a running exporter ---------------------------------------------------------------------------


class RecordingSink:
    """An extra sink that keeps every update it receives, in order."""

    name = "recording"

    def __init__(self) -> None:
        self.updates: list[SinkUpdate] = []
        self._changed = asyncio.Condition()

    def snapshots(self, cluster_name: str | None = None) -> list[ClusterSnapshot]:
        return [
            u
            for u in self.updates
            if isinstance(u, ClusterSnapshot) and cluster_name in (None, u.cluster)
        ]

    def withdrawals(self) -> list[ClusterWithdrawn]:
        return [u for u in self.updates if isinstance(u, ClusterWithdrawn)]

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        async for update in inbox:
            async with self._changed:
                self.updates.append(update)
                self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[], bool], *, within: float = 30.0, what: str = "condition"
    ) -> None:
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"{what} not reached within {within:g}s") from None

    async def wait_snapshot(
        self,
        cluster_name: str,
        predicate: Callable[[ClusterSnapshot], bool] = lambda _: True,
        *,
        after: float = 0.0,
        within: float = 30.0,
    ) -> ClusterSnapshot:
        """The first snapshot of ``cluster_name`` whose cycle started (wall clock) at or after
        ``after`` and satisfies ``predicate``."""
        found: list[ClusterSnapshot] = []

        def matched() -> bool:
            for snapshot in self.snapshots(cluster_name):
                if snapshot.started_at >= after and predicate(snapshot):
                    found.append(snapshot)
                    return True
            return False

        await self.wait_for(matched, within=within, what=f"a matching {cluster_name} snapshot")
        return found[0]


@dataclass
class Running:
    exporter: Exporter
    recorder: RecordingSink
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def cycles(self, count: int, *, within: float = 30.0) -> None:
        """Wait until the Prometheus sink has applied ``count`` more updates than now."""
        target = self.exporter.prometheus.applied + count
        try:
            async with asyncio.timeout(within):
                await self.exporter.prometheus.wait_applied(target)
        except TimeoutError:
            raise AssertionError(f"{count} more updates not applied within {within:g}s") from None

    async def fresh_snapshot(self, cluster_name: str, *, within: float = 30.0) -> ClusterSnapshot:
        """A snapshot of a cycle that started after this call (so it saw every change made
        before it), once the Prometheus sink has applied it too."""
        after = time.time()
        snapshot = await self.recorder.wait_snapshot(cluster_name, after=after, within=within)
        await self.wait_rendered(snapshot)
        return snapshot

    async def wait_rendered(self, snapshot: ClusterSnapshot, *, within: float = 10.0) -> None:
        """Until ``/metrics`` shows ``snapshot`` (or a newer one) of its cluster."""
        deadline = time.monotonic() + within
        name = "kafka_lag_exporter_last_update_timestamp_seconds"
        while True:
            shown = [
                v
                for (family, labels), v in scrape(self.exporter).items()
                if family == name and ("cluster_name", snapshot.cluster) in labels
            ]
            if shown and shown[0] >= snapshot.observed_at:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"snapshot {snapshot.cycle} not rendered within {within:g}s")
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.exporter.prometheus.wait_applied(
                        self.exporter.prometheus.applied + 1
                    )
            except TimeoutError:
                continue


def build_exporter(
    config: Settings, *, client_factory: ClientFactory = default_client_factory
) -> tuple[Exporter, RecordingSink]:
    """An Exporter whose sinks include a :class:`RecordingSink` (not started)."""
    recorder = RecordingSink()
    return Exporter(config, client_factory=client_factory, extra_sinks=[recorder]), recorder


@contextlib.asynccontextmanager
async def running(
    config: Settings,
    *,
    client_factory: ClientFactory = default_client_factory,
    built: tuple[Exporter, RecordingSink] | None = None,
) -> AsyncIterator[Running]:
    """The exporter (Runner, every stage and sink, plus a :class:`RecordingSink`) running in this
    event loop until the block ends; then stopped under a deadline, its clients closed.
    ``built`` runs an exporter from :func:`build_exporter` instead of building one."""
    exporter, recorder = built or build_exporter(config, client_factory=client_factory)
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, 10.0), name="exporter-under-test")
    try:
        yield Running(exporter, recorder, stop, task)
    finally:
        stop.set()
        try:
            async with asyncio.timeout(30):
                await task
        finally:
            await exporter.close_clients()


# -- client wrappers --------------------------------------------------------------------------


class WrappedClient:
    """Delegates every :class:`ClusterClient` call to a real client; subclasses intervene."""

    def __init__(self, inner: ClusterClient) -> None:
        self.inner = inner

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def list_groups(self) -> GroupListing:
        return await self.inner.list_groups()

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        return await self.inner.describe_groups(groups)

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        return await self.inner.fetch_committed_offsets(groups)

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        return await self.inner.list_watermarks(topics)

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        return await self.inner.sample_timestamps(wanted)

    async def overview(self) -> ClusterOverview:
        return await self.inner.overview()


def wrapping(
    wrap: Callable[[ClusterClient], ClusterClient], *, only: str | None = None
) -> ClientFactory:
    """A client factory that wraps the real adapter of cluster ``only`` (or of every cluster)."""

    def factory(
        cluster_settings: ClusterSettings, exporter: ExporterSettings, observer: RequestObserver
    ) -> ClusterClient:
        real = default_client_factory(cluster_settings, exporter, observer)
        if only is not None and cluster_settings.name != only:
            return real
        return wrap(real)

    return factory


class BreakableClient(WrappedClient):
    """A real cluster that can be made unreachable: once ``broken``, every call fails the way an
    unreachable cluster fails (KafkaConnectionError), so the exporter's real failure path runs."""

    def __init__(self, inner: ClusterClient) -> None:
        super().__init__(inner)
        self.broken = False
        self.calls_while_broken = 0

    def _check(self) -> None:
        if self.broken:
            self.calls_while_broken += 1
            raise KafkaConnectionError("cluster unreachable (broken on purpose)", broker="0")

    async def connect(self) -> None:
        self._check()
        await super().connect()

    async def list_groups(self) -> GroupListing:
        self._check()
        return await super().list_groups()

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        self._check()
        return await super().describe_groups(groups)

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        self._check()
        return await super().fetch_committed_offsets(groups)

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        self._check()
        return await super().list_watermarks(topics)


class GatedClient(WrappedClient):
    """Holds ``list_watermarks`` (mid-cycle: after discovery and offsets) while the gate is
    closed; ``held`` is set while a call waits there."""

    def __init__(self, inner: ClusterClient) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        await hold(self.gate, self.held)
        return await super().list_watermarks(topics)


async def hold(gate: asyncio.Event, held: asyncio.Event) -> None:
    """Wait while ``gate`` is clear, with ``held`` set meanwhile (so a test knows a call is
    parked there); return at once when the gate is open."""
    if not gate.is_set():
        held.set()
        try:
            await gate.wait()
        finally:
            held.clear()


class GhostCommitsClient(WrappedClient):
    """Adds commits on a topic that does not exist to every answer for ``group``, the way a
    broker reports offsets that outlived their topic (older brokers keep them until they expire;
    Kafka 4 drops them a moment after the deletion)."""

    def __init__(self, inner: ClusterClient, group: str, ghost: Mapping[TopicPartition, int]):
        super().__init__(inner)
        self.group = group
        self.ghost = dict(ghost)
        self.watermark_requests: list[frozenset[str]] = []

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        real = await super().fetch_committed_offsets(groups)
        offsets = dict(real.offsets)
        if self.group in offsets:
            offsets[self.group] = MappingProxyType({**offsets[self.group], **self.ghost})
        return CommittedOffsets(MappingProxyType(offsets), real.failures)

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        self.watermark_requests.append(frozenset(topics))
        return await super().list_watermarks(topics)


class CountingObserver:
    """A RequestObserver counting requests by API (and remembering every outcome)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        self.requests.append((api, broker, outcome))

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        pass

    def counts(self) -> Counter[str]:
        return Counter(api for api, _, _ in self.requests)


# -- loopback addresses that do not work ---------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never answers (a hung broker)."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


# -- ground truth about group members ---------------------------------------------------------


@dataclass(frozen=True)
class MemberTruth:
    consumer_id: str
    host: str
    client_id: str


async def describe_members(bootstrap: str, group: str) -> list[MemberTruth]:
    """Members of ``group`` as the Java ``kafka-consumer-groups --describe --members`` shows
    them (independent of the code under test; classic and KIP-848 groups alike). ``host`` is
    exactly what Kafka reports (``/127.0.0.1``), the form the ``member_host`` label carries."""
    output = await asyncio.to_thread(
        kafka_local.consumer_groups, bootstrap, "--describe", "--members", "--group", group
    )
    members = []
    for line in output.splitlines():
        parts = line.split()
        if parts[:1] == [group] and len(parts) >= 4:
            members.append(MemberTruth(parts[1], parts[2], parts[3]))
    return members


# -- a classic member driven by raw requests ------------------------------------------------------

MEMBER_ID_REQUIRED = 79


@dataclass
class RawGroupMember:
    """One classic ("consumer" protocol type) member speaking JoinGroup / SyncGroup itself, so
    a test decides when the group moves: joined but not synced is CompletingRebalance; a second
    member joining while this one never re-joins holds the group in PreparingRebalance for the
    whole rebalance timeout."""

    client: AIOKafkaClient
    coordinator: int
    group: str
    topics: tuple[str, ...]
    member_id: str = ""
    generation: int = -1
    pending: list[asyncio.Task[Any]] = field(default_factory=list)

    async def join(self) -> Any:
        """JoinGroup until it completes (the second round carries the broker-given member id)."""
        metadata = ProtocolMetadata(0, list(self.topics), b"").encode()
        for _ in range(3):
            request = JoinGroupRequest(
                self.group,
                60_000,  # session timeout: nobody heartbeats, nobody may expire mid-test
                60_000,  # rebalance timeout: a rebalance waits this long for silent members
                self.member_id,
                None,  # no static membership (a nullable field)
                "consumer",
                [("range", metadata)],
            )
            response = await self.client.send(self.coordinator, request)
            if response.error_code == MEMBER_ID_REQUIRED:
                self.member_id = response.member_id
                continue
            assert response.error_code == 0, f"JoinGroup error {response.error_code}"
            self.member_id = response.member_id
            self.generation = response.generation_id
            return response
        raise AssertionError("JoinGroup did not complete in three rounds")

    def join_in_background(self) -> asyncio.Task[Any]:
        """Start a JoinGroup whose answer waits for the rebalance (kept until :meth:`leave`)."""
        task = asyncio.create_task(self.join(), name=f"join-{self.group}")
        self.pending.append(task)
        return task

    async def sync(self, assignment: Mapping[str, Sequence[TopicPartition]]) -> None:
        """SyncGroup as leader: ``assignment`` maps member id → partitions."""
        group_assignment = []
        for member_id, parts in assignment.items():
            by_topic: dict[str, list[int]] = {}
            for tp in parts:
                by_topic.setdefault(tp.topic, []).append(tp.partition)
            encoded = MemberAssignment(0, sorted(by_topic.items()), b"").encode()
            group_assignment.append((member_id, encoded))
        request = SyncGroupRequest(
            self.group,
            self.generation,
            self.member_id,
            None,  # no static membership (a nullable field)
            group_assignment,
        )
        response = await self.client.send(self.coordinator, request)
        assert response.error_code == 0, f"SyncGroup error {response.error_code}"

    async def leave(self) -> None:
        for task in self.pending:
            task.cancel()
        for task in self.pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.member_id:
            # Best effort: the group expires its members anyway once the session timeout passes.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    request = LeaveGroupRequest(self.group, self.member_id)
                    await self.client.send(self.coordinator, request)


@contextlib.asynccontextmanager
async def raw_members(
    bootstrap: str, group: str, topics: Iterable[str], count: int, *, client_id: str
) -> AsyncIterator[list[RawGroupMember]]:
    """``count`` raw members of ``group`` (none has joined yet), each on its own connection so a
    pending JoinGroup of one never holds up the requests of another."""
    clients: list[AIOKafkaClient] = []
    members: list[RawGroupMember] = []
    try:
        for _ in range(count):
            client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id=client_id)
            clients.append(client)
            await client.bootstrap()
            coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group)
            members.append(RawGroupMember(client, coordinator, group, tuple(topics)))
        yield members
    finally:
        for member in members:
            await member.leave()
        for client in clients:
            await client.close()
