"""The aiokafka adapter against a real broker; ground truth comes from tests.support.kafka."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import pytest
from aiokafka import AIOKafkaProducer

from devtools.kafka_local import KafkaCluster, SaslListener, ScramUser
from klag_pipeline.errors import KafkaAuthError, KafkaConnectionError
from klag_pipeline.kafka.adapter import AiokafkaClusterClient
from klag_pipeline.model import GroupState, ListedGroup, TopicPartition, Watermarks
from klag_pipeline.settings.schema import ClusterSettings, PerformanceSettings
from tests.support.kafka import KafkaTestClient, Rec, wait_until

pytestmark = pytest.mark.kafka


class CountingObserver:
    """A RequestObserver that remembers every request (api, broker, outcome)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        self.requests.append((api, broker, outcome))

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        self.requests.append((api, broker, f"throttle {throttle_ms}"))

    def counts(self) -> Counter[str]:
        return Counter(api for api, _, _ in self.requests)


def _settings(bootstrap: str, **props: str) -> ClusterSettings:
    return ClusterSettings(
        name="test",
        bootstrap_servers=tuple(bootstrap.split(",")),
        consumer_properties=props,
    )


@pytest.fixture
async def observer() -> CountingObserver:
    return CountingObserver()


@pytest.fixture
async def adapter(
    kafka_bootstrap: str, observer: CountingObserver
) -> AsyncIterator[AiokafkaClusterClient]:
    client = AiokafkaClusterClient(
        _settings(kafka_bootstrap), PerformanceSettings(kafka_timeout=15.0), observer
    )
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


async def _listed(
    adapter: AiokafkaClusterClient, group_ids: Sequence[str], within: float = 30.0
) -> dict[str, ListedGroup]:
    """Our groups as ListGroups reports them, once all are listed."""
    found: dict[str, ListedGroup] = {}

    async def all_listed() -> bool:
        listing = await adapter.list_groups()
        found.clear()
        found.update({g.group_id: g for g in listing.groups if g.group_id in group_ids})
        return len(found) == len(group_ids)

    await wait_until(all_listed, within=within, message=f"groups {group_ids} listed")
    return found


async def test_classic_group_with_a_member_is_listed_and_described(
    adapter: AiokafkaClusterClient, kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=3)
    async with kafka.classic_member(
        group, topic, consume=False, options={"client_id": "klag-test-member"}
    ) as member:

        async def stable() -> bool:
            listed = await _listed(adapter, [group])
            described = await adapter.describe_groups(list(listed.values()))
            return described.groups[group].state is GroupState.STABLE

        await wait_until(stable, message=f"{group} stable")
        listed = (await _listed(adapter, [group]))[group]
        assert (listed.protocol_type, listed.group_type) == ("consumer", "classic")
        assert listed.coordinator in [b[0] for b in (await adapter.overview()).brokers]
        described = await adapter.describe_groups([listed])
        description = described.groups[group]
        assert described.failures == ()
        assert description.protocol_type == "consumer"
        assert description.coordinator == listed.coordinator
        assert len(description.members) == 1
        only = description.members[0]
        assert only.client_id == "klag-test-member"
        assert only.client_host.endswith("127.0.0.1")
        assert only.assignment == member.assignment()
        assert only.assignment == {TopicPartition(topic, p) for p in range(3)}


async def test_group_with_commits_only_is_empty_and_its_offsets_exact(
    adapter: AiokafkaClusterClient, kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", partition=p) for p in (0, 0, 1)])
    committed = {TopicPartition(topic, 0): 2, TopicPartition(topic, 1): 0}
    await kafka.commit(group, committed)
    listed = (await _listed(adapter, [group]))[group]
    assert listed.protocol_type == ""
    described = await adapter.describe_groups([listed])
    assert described.groups[group].state is GroupState.EMPTY
    assert described.groups[group].members == ()
    offsets = await adapter.fetch_committed_offsets([listed])
    assert offsets.failures == ()
    assert dict(offsets.offsets[group]) == committed == await kafka.committed(group)


async def test_kip848_group_is_described_with_members_and_offsets(
    adapter: AiokafkaClusterClient,
    kafka: KafkaTestClient,
    unique: Callable[[str], str],
    observer: CountingObserver,
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"a", partition=0), Rec(b"b", partition=1)])
    async with kafka.console_consumer(topic, group, group_protocol="consumer"):
        want = {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 1}

        async def consumed_and_committed() -> bool:
            return await kafka.committed(group) == want

        await wait_until(consumed_and_committed, within=60, message="console consumer commits")
        listed = (await _listed(adapter, [group]))[group]
        assert listed.group_type == "consumer"
        assert listed.protocol_type == "consumer"

        async def stable_with_assignment() -> bool:
            described = await adapter.describe_groups([listed])
            group_desc = described.groups.get(group)
            return (
                group_desc is not None
                and group_desc.state is GroupState.STABLE
                and len(group_desc.members) == 1
                and group_desc.members[0].assignment == set(want)
            )

        await wait_until(stable_with_assignment, within=60, message="KIP-848 group stable")
        description = (await adapter.describe_groups([listed])).groups[group]
        assert description.group_type == "consumer"
        assert description.members[0].client_host.endswith("127.0.0.1")
        assert description.members[0].member_id
        assert ("ConsumerGroupDescribe", str(listed.coordinator), "ok") in observer.requests
        # OffsetFetch v8+ with a null member id is an admin fetch: it works for KIP-848 groups.
        offsets = await adapter.fetch_committed_offsets([listed])
        assert offsets.failures == ()
        assert dict(offsets.offsets[group]) == want


async def test_committed_offsets_of_several_groups_in_one_request(
    adapter: AiokafkaClusterClient,
    kafka: KafkaTestClient,
    unique: Callable[[str], str],
    observer: CountingObserver,
) -> None:
    topics = [unique("t"), unique("t")]
    for topic in topics:
        await kafka.create_topic(topic, partitions=3)
        await kafka.produce(topic, [Rec(b"x", partition=p) for p in range(3) for _ in range(5)])
    groups = [unique("g") for _ in range(4)]
    expected: dict[str, dict[TopicPartition, int]] = {}
    for i, group in enumerate(groups):
        expected[group] = {
            TopicPartition(topic, p): (i + p + t) % 6 for t, topic in enumerate(topics[: 1 + i % 2])
            for p in range(3) if (i + p) % 3
        }  # fmt: skip
        await kafka.commit(group, expected[group])
    listed = await _listed(adapter, groups)
    before = observer.counts()["OffsetFetch"]
    result = await adapter.fetch_committed_offsets(list(listed.values()))
    assert observer.counts()["OffsetFetch"] - before == 1
    assert result.failures == ()
    assert {g: dict(o) for g, o in result.offsets.items()} == expected
    for group in groups:
        assert expected[group] == await kafka.committed(group)


async def test_watermarks_are_exact_and_delete_records_moves_low(
    adapter: AiokafkaClusterClient, kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic, empty = unique("t"), unique("t")
    await kafka.create_topic(topic, partitions=3)
    await kafka.create_topic(empty, partitions=1)
    counts = {0: 7, 1: 0, 2: 3}
    await kafka.produce(
        topic, [Rec(b"v", partition=p) for p, n in counts.items() for _ in range(n)]
    )
    listing = await adapter.list_watermarks([topic, empty])
    assert listing.failures == ()
    assert listing.missing_topics == frozenset()
    assert dict(listing.watermarks) == {
        TopicPartition(topic, 0): Watermarks(0, 7),
        TopicPartition(topic, 1): Watermarks(0, 0),
        TopicPartition(topic, 2): Watermarks(0, 3),
        TopicPartition(empty, 0): Watermarks(0, 0),
    }
    truth = await kafka.watermarks(topic)
    mine = {tp.partition: w for tp, w in listing.watermarks.items() if tp.topic == topic}
    assert {p: (w.low, w.high) for p, w in mine.items()} == truth

    await kafka.delete_records(topic, {0: 4, 2: 3})
    after = await adapter.list_watermarks([topic])
    assert after.watermarks[TopicPartition(topic, 0)] == Watermarks(4, 7)
    assert after.watermarks[TopicPartition(topic, 2)] == Watermarks(3, 3)
    assert after.watermarks[TopicPartition(topic, 1)] == Watermarks(0, 0)


async def test_read_committed_high_watermark_is_the_last_stable_offset(
    kafka_bootstrap: str, kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic = unique("t")
    await kafka.create_topic(topic, partitions=1)
    await kafka.produce(topic, [Rec(b"a"), Rec(b"b")])
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique("tx"), enable_idempotence=True
    )
    await producer.start()
    committed = AiokafkaClusterClient(
        _settings(kafka_bootstrap, **{"isolation.level": "read_committed"}),
        PerformanceSettings(kafka_timeout=15.0),
    )
    uncommitted = AiokafkaClusterClient(_settings(kafka_bootstrap), PerformanceSettings())
    await committed.connect()
    await uncommitted.connect()
    try:
        await producer.begin_transaction()
        await (await producer.send(topic, b"open", partition=0))
        tp = TopicPartition(topic, 0)
        # The open transaction's record is past the last stable offset (2) but below HW (3).
        assert (await committed.list_watermarks([topic])).watermarks[tp] == Watermarks(0, 2)
        assert (await uncommitted.list_watermarks([topic])).watermarks[tp] == Watermarks(0, 3)
        assert (await kafka.watermarks(topic, read_committed=True))[0] == (0, 2)
        await producer.abort_transaction()
    finally:
        await producer.stop()
        await committed.close()
        await uncommitted.close()


async def test_deleted_topic_is_missing_and_never_recreated(
    adapter: AiokafkaClusterClient, kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic, never = unique("t"), unique("never")
    await kafka.create_topic(topic, partitions=2)
    first = await adapter.list_watermarks([topic])
    assert len(first.watermarks) == 2  # now cached with its leaders
    await kafka.delete_topic(topic)

    async def reported_missing() -> bool:
        listing = await adapter.list_watermarks([topic, never])
        return listing.missing_topics == {topic, never} and not listing.watermarks

    await wait_until(reported_missing, message="deleted topic reported missing")
    for name in (topic, never):
        with pytest.raises(AssertionError, match="does not exist"):
            await kafka.watermarks(name)


async def test_one_cycle_costs_constant_requests_per_api(
    kafka_bootstrap: str, kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topics = [unique("t") for _ in range(3)]
    for topic in topics:
        await kafka.create_topic(topic, partitions=4)
    groups = [unique("g") for _ in range(30)]
    await asyncio.gather(
        *(
            kafka.commit(group, {TopicPartition(topics[i % 3], i % 4): i})
            for i, group in enumerate(groups)
        )
    )
    observer = CountingObserver()
    client = AiokafkaClusterClient(
        _settings(kafka_bootstrap), PerformanceSettings(kafka_timeout=15.0), observer
    )
    await client.connect()
    try:
        brokers = len((await client.overview()).brokers)
        observer.requests.clear()
        listing = await client.list_groups()
        ours = [g for g in listing.groups if g.group_id in set(groups)]
        assert len(ours) == 30
        described = await client.describe_groups(ours)
        offsets = await client.fetch_committed_offsets(ours)
        watermarks = await client.list_watermarks(topics)
    finally:
        await client.close()
    assert len(described.groups) == 30
    assert {g: dict(o) for g, o in offsets.offsets.items()} == {
        group: {TopicPartition(topics[i % 3], i % 4): i} for i, group in enumerate(groups)
    }
    assert len(watermarks.watermarks) == 12
    counts = observer.counts()
    assert counts["ListGroups"] == brokers
    assert counts["DescribeGroups"] <= brokers
    assert counts["OffsetFetch"] <= brokers
    assert counts["Metadata"] == 1
    assert counts["ListOffsets"] <= 2 * brokers
    assert counts["FindCoordinator"] == 0
    assert all(outcome == "ok" for _, _, outcome in observer.requests)


async def test_request_count_does_not_grow_with_the_number_of_groups(
    kafka_bootstrap: str, kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    # More groups than any earlier chunk size (500, then 1,000 groups per request).
    topic = unique("many")
    await kafka.create_topic(topic, partitions=2)
    groups = {unique("g"): {TopicPartition(topic, i % 2): i} for i in range(1_200)}
    await kafka.commit_many(groups)
    observer = CountingObserver()
    client = AiokafkaClusterClient(
        _settings(kafka_bootstrap), PerformanceSettings(kafka_timeout=30.0), observer
    )
    await client.connect()
    try:
        brokers = len((await client.overview()).brokers)
        listing = await client.list_groups()
        ours = [g for g in listing.groups if g.group_id in groups]
        observer.requests.clear()
        described = await client.describe_groups(ours)
        offsets = await client.fetch_committed_offsets(ours)
    finally:
        await client.close()
    assert len(described.groups) == len(groups)
    assert {g: dict(o) for g, o in offsets.offsets.items()} == groups
    counts = observer.counts()
    assert counts["DescribeGroups"] <= brokers
    assert counts["OffsetFetch"] <= brokers


async def test_unreachable_bootstrap_names_the_broker() -> None:
    client = AiokafkaClusterClient(
        _settings("127.0.0.1:1"), PerformanceSettings(kafka_timeout=3.0), None
    )
    with pytest.raises(KafkaConnectionError, match=r"127\.0\.0\.1:1") as info:
        await client.connect()
    assert info.value.broker == "127.0.0.1:1"
    await client.close()


@pytest.fixture(scope="module")
def sasl_cluster() -> Iterator[KafkaCluster]:
    listener = SaslListener(
        plain_users={"klag": "right-pw"},
        scram_users=(ScramUser("klag", "right-pw", "SCRAM-SHA-512"),),
    )
    cluster = KafkaCluster(1, listeners=[listener])
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_sasl_login_and_failed_auth_names_mechanism_without_password(
    sasl_cluster: KafkaCluster, mechanism: str
) -> None:
    bootstrap = sasl_cluster.listener("SASL_PLAINTEXT").bootstrap
    props = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism}
    good = AiokafkaClusterClient(
        _settings(bootstrap, **props, **{"sasl.username": "klag", "sasl.password": "right-pw"}),
        PerformanceSettings(kafka_timeout=10.0),
    )
    await good.connect()
    try:
        assert (await good.list_groups()).failures == ()
    finally:
        await good.close()

    bad = AiokafkaClusterClient(
        _settings(bootstrap, **props, **{"sasl.username": "klag", "sasl.password": "wrong-pw-42"}),
        PerformanceSettings(kafka_timeout=10.0),
    )
    with pytest.raises(KafkaAuthError) as info:
        await bad.connect()
    await bad.close()
    message = str(info.value)
    assert mechanism in message
    assert info.value.mechanism == mechanism
    assert info.value.broker == bootstrap
    assert bootstrap in message
    assert "wrong-pw-42" not in message
