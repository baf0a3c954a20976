"""``AiokafkaClusterClient``: the port's methods, delegated to the group and watermark parts."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType

from klag_pipeline.kafka.adapter.groups import GroupOps
from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.kafka.adapter.watermarks import WatermarkOps
from klag_pipeline.kafka.port import (
    ClusterOverview,
    CommittedOffsets,
    GroupDescriptions,
    GroupListing,
    RequestObserver,
    TimestampListing,
    WatermarkListing,
)
from klag_pipeline.kafka.protocol import READ_COMMITTED, REPORTED_APIS
from klag_pipeline.kafka.sampler import TimestampSampler
from klag_pipeline.model import ListedGroup, TopicPartition
from klag_pipeline.settings.schema import (
    ClusterSettings,
    PerformanceSettings,
    TimestampSamplingSettings,
)


class AiokafkaClusterClient:
    """One Kafka cluster through aiokafka's ``AIOKafkaClient`` used as a transport only.

    Construction validates ``consumer_properties`` (raises ConfigError); ``warnings`` lists the
    properties that were ignored. Nothing touches the network before :meth:`connect`.
    """

    def __init__(
        self,
        cluster: ClusterSettings,
        performance: PerformanceSettings,
        observer: RequestObserver | None = None,
        sampling: TimestampSamplingSettings | None = None,
    ) -> None:
        self._transport = Transport(cluster, performance, observer)
        self._observer = observer
        self._sampling = sampling or TimestampSamplingSettings()
        self._sampler: TimestampSampler | None = None
        self.warnings: tuple[str, ...] = self._transport.warnings
        max_age_ms = cluster.consumer_properties.get("metadata.max.age.ms")
        max_age = int(max_age_ms) / 1000 if max_age_ms else None
        self._groups = GroupOps(self._transport)
        self._watermarks = WatermarkOps(self._transport, max_age)

    async def connect(self) -> None:
        # A reconnect replaces the aiokafka client: the sampler (built on the old one) must go
        # too, or its Fetches keep using the discarded client and its frozen metadata.
        self._sampler = None
        await self._transport.connect()

    async def close(self) -> None:
        self._sampler = None
        await self._transport.close()

    def waiting_on(self) -> tuple[str, ...]:
        """Brokers an answer is awaited from right now (see :meth:`Transport.waiting_on`)."""
        return self._transport.waiting_on()

    async def list_groups(self) -> GroupListing:
        # Discovery starts each cycle: a broker that came back must be asked for its groups.
        await self._transport.sync_brokers()
        return await self._groups.list_groups()

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        return await self._groups.describe_groups(groups)

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        return await self._groups.fetch_committed_offsets(groups)

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        return await self._watermarks.list_watermarks(topics)

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        if self._sampler is None:
            # Built per connection: it holds the aiokafka client, learned batch sizes and
            # per-broker throttle state.
            self._sampler = TimestampSampler(
                self._transport.fetch_sender(self._observer),
                max_bytes_per_partition=self._sampling.max_bytes_per_partition,
                max_concurrent_fetches=self._sampling.max_concurrent_fetches,
                fetch_timeout=self._sampling.fetch_timeout,
                isolation_level=(
                    "read_committed"
                    if self._transport.isolation_level == READ_COMMITTED
                    else "read_uncommitted"
                ),
                observer=self._observer,
            )
        result = await self._sampler.sample(wanted, self._watermarks.leaders(wanted))
        return TimestampListing(result.samples, result.failures)

    async def overview(self) -> ClusterOverview:
        metadata, _ = await self._watermarks.metadata(None)
        visible = [t for t in metadata.topics if not t.internal and t.error_code == 0]
        listing = await self._groups.list_groups()
        nodes = self._transport.nodes()
        versions = await self._transport.versions(nodes[0]) if nodes else {}
        api_versions = {
            name: versions[key][1] for name, key in REPORTED_APIS.items() if key in versions
        }
        return ClusterOverview(
            cluster_id=metadata.cluster_id,
            controller_id=metadata.controller_id if metadata.controller_id >= 0 else None,
            brokers=tuple(sorted((b.node_id, b.host, b.port) for b in metadata.brokers)),
            topic_count=len(visible),
            partition_count=sum(len(t.partitions) for t in visible),
            group_count=len(listing.groups),
            api_versions=MappingProxyType(api_versions),
        )
