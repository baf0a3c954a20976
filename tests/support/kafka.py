"""Ground-truth helpers for integration tests: create the state a test needs on a real broker
and read it back with plain clients, independently of the klag_pipeline adapter under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic, RecordsToDelete
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.structs import OffsetAndMetadata
from aiokafka.structs import TopicPartition as AioTopicPartition

from devtools import kafka_local
from klag_pipeline.model import TopicPartition
from tests.support.waiting import wait_until  # also imported from here by many tests

_COORDINATOR_NOT_READY = frozenset({14, 15, 16})
"""COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR."""

Compression = Literal["gzip", "snappy", "lz4", "zstd"]


async def _while_coordinator_not_ready(
    what: str, attempt: Callable[[], Awaitable[set[int]]], *, tries: int = 40
) -> None:
    """Run ``attempt`` (it returns the answer's error codes) until every code is 0, for at most
    ``tries`` × 0.25 s while the group's coordinator is not ready: a fresh ``__consumer_offsets``
    partition takes a moment to load, and on a busy broker a coordinator can be briefly
    unavailable (GroupCoordinatorNotAvailable, seen in the lifecycle test)."""
    codes: set[int] = set()
    for _ in range(tries):
        try:
            codes = await attempt()
        except KafkaError as exc:
            if not exc.retriable:
                raise
            codes = {getattr(exc, "errno", -1)}  # -1: not an error the broker sent
        else:
            if codes <= {0}:
                return
            if not codes <= {0, *_COORDINATOR_NOT_READY}:
                break
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: error codes {sorted(codes)}")


@dataclass(frozen=True, slots=True)
class Rec:
    """One record to produce. ``timestamp_ms`` None lets the producer stamp it (CreateTime now)."""

    value: bytes
    partition: int = 0
    timestamp_ms: int | None = None
    key: bytes | None = None


class ClassicMember:
    """A real aiokafka consumer that is a member of a classic group (see
    :meth:`KafkaTestClient.classic_member`). ``consumed`` counts records polled in the background.
    """

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.consumed = 0

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(
            TopicPartition(tp.topic, tp.partition) for tp in self.consumer.assignment()
        )

    async def wait_consumed(self, count: int, within: float = 30.0) -> None:
        async def enough() -> bool:
            return self.consumed >= count

        await wait_until(enough, within=within, message=f"{count} records consumed")


class KafkaTestClient:
    """Test-side client for one cluster: topics, records, offsets, groups and ground truth.

    ``client_options`` are passed to every aiokafka client (security settings for SASL/SSL
    listeners). Build with :meth:`connect`; :meth:`close` closes every client it opened.
    """

    def __init__(self, bootstrap: str, client_options: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self._options: dict[str, Any] = {"bootstrap_servers": bootstrap, **(client_options or {})}
        self._admin = AIOKafkaAdminClient(**self._options)
        self._producers: dict[str | None, AIOKafkaProducer] = {}
        self._readers: dict[str, AIOKafkaConsumer] = {}

    @classmethod
    async def connect(
        cls, bootstrap: str, client_options: Mapping[str, Any] | None = None
    ) -> KafkaTestClient:
        client = cls(bootstrap, client_options)
        try:
            await client._admin.start()
        except BaseException:
            await client.close()
            raise
        return client

    async def close(self) -> None:
        clients: list[Any] = [*self._producers.values(), *self._readers.values()]
        self._producers.clear()
        self._readers.clear()
        for client in clients:
            await client.stop()
        await self._admin.close()

    # -- topics

    async def _topic_metadata(self) -> dict[str, dict[int, int]]:
        """topic → {partition: leader}. Asks for *all* topics: naming one would auto-create it."""
        topics = await self._admin.describe_topics()
        return {
            t["topic"]: {p["partition"]: p["leader"] for p in t["partitions"]}
            for t in topics
            if t["error_code"] == 0
        }

    async def _wait_partitions(self, name: str, count: int | None) -> None:
        async def ready() -> bool:
            leaders = (await self._topic_metadata()).get(name)
            if count is None:
                return leaders is None
            return leaders is not None and len(leaders) == count and min(leaders.values()) >= 0

        state = "deleted" if count is None else f"{count} partitions with leaders"
        await wait_until(ready, message=f"topic {name} {state}")

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
        replication_factor: int = 1,
    ) -> None:
        """Create a topic and wait until its metadata shows every partition with a leader."""
        topic = NewTopic(name, partitions, replication_factor, topic_configs=dict(config or {}))
        response = await self._admin.create_topics([topic])
        for result in response.topic_errors:
            if result[1] != 0:
                raise AssertionError(f"create_topic {name}: error {result[1:]}")
        await self._wait_partitions(name, partitions)

    async def delete_topic(self, name: str) -> None:
        await self._admin.delete_topics([name])
        await self._wait_partitions(name, None)

    async def add_partitions(self, name: str, total: int) -> None:
        await self._admin.create_partitions({name: NewPartitions(total)})
        await self._wait_partitions(name, total)

    # -- records

    async def _producer(self, compression: Compression | None) -> AIOKafkaProducer:
        producer = self._producers.get(compression)
        if producer is None:
            producer = AIOKafkaProducer(
                **self._options, acks="all", linger_ms=0, compression_type=compression
            )
            await producer.start()
            self._producers[compression] = producer
        return producer

    async def produce(
        self,
        topic: str,
        records: Sequence[Rec],
        *,
        compression: Compression | None = None,
        one_batch: bool = False,
    ) -> list[int]:
        """Produce ``records`` in order and return the offsets the broker assigned.

        ``one_batch=True`` writes them as a single record batch (all must share a partition),
        which is how tests get a committed offset in the middle of a (compressed) batch.
        """
        producer = await self._producer(compression)
        if one_batch:
            return await self._produce_batch(producer, topic, records)
        futures = [
            await producer.send(
                topic,
                r.value,
                key=r.key,
                partition=r.partition,
                timestamp_ms=r.timestamp_ms,
            )
            for r in records
        ]
        return [metadata.offset for metadata in await asyncio.gather(*futures)]

    async def _produce_batch(
        self, producer: AIOKafkaProducer, topic: str, records: Sequence[Rec]
    ) -> list[int]:
        partitions = {r.partition for r in records}
        if len(partitions) != 1:
            raise ValueError("one_batch needs records of exactly one partition")
        batch = producer.create_batch()
        for r in records:
            if batch.append(key=r.key, value=r.value, timestamp=r.timestamp_ms) is None:
                raise ValueError("records do not fit into one batch")
        batch.close()
        metadata = await (await producer.send_batch(batch, topic, partition=partitions.pop()))
        return [metadata.offset + i for i in range(len(records))]

    async def produce_transactional(
        self, topic: str, records: Sequence[Rec], *, commit: bool = True
    ) -> list[int]:
        """Produce ``records`` in one transaction, then commit it or (``commit=False``) abort it.

        Returns the data records' offsets once each partition's control record (the commit or
        abort marker) is in the log, right after the transaction's last record there (when no
        other producer writes to the partition meanwhile).
        """
        producer = AIOKafkaProducer(
            **self._options,
            acks="all",
            enable_idempotence=True,
            transactional_id=f"klag-test-{secrets.token_hex(6)}",
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            futures = [
                await producer.send(
                    topic, r.value, key=r.key, partition=r.partition, timestamp_ms=r.timestamp_ms
                )
                for r in records
            ]
            offsets = [metadata.offset for metadata in await asyncio.gather(*futures)]
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
        finally:
            await producer.stop()
        # EndTxn returns before the coordinator has written the markers; a later append could
        # land in front of them. The last stable offset passes the data once they are written.
        last = {r.partition: o for r, o in zip(records, offsets, strict=True)}
        reader = await self._reader("read_committed")
        tps = [AioTopicPartition(topic, p) for p in last]

        async def markers_written() -> bool:
            stable = await reader.end_offsets(tps)
            return all(stable[tp] > last[tp.partition] for tp in tps)

        await wait_until(markers_written, message=f"transaction markers in {topic}")
        return offsets

    async def delete_records(self, topic: str, before: Mapping[int, int]) -> dict[int, int]:
        """DeleteRecords: move each partition's log start to ``before[partition]``.

        Returns the new low watermarks the broker reported.
        """
        request = {AioTopicPartition(topic, p): RecordsToDelete(o) for p, o in before.items()}
        result = await self._admin.delete_records(request)
        return {tp.partition: low for tp, low in result.items()}

    # -- ground truth

    async def _reader(self, isolation_level: str) -> AIOKafkaConsumer:
        reader = self._readers.get(isolation_level)
        if reader is None:
            reader = AIOKafkaConsumer(
                **self._options, enable_auto_commit=False, isolation_level=isolation_level
            )
            await reader.start()
            self._readers[isolation_level] = reader
        return reader

    async def watermarks(
        self, topic: str, *, read_committed: bool = False
    ) -> dict[int, tuple[int, int]]:
        """partition → (low, high). ``read_committed`` makes "high" the last stable offset."""
        partitions = (await self._topic_metadata()).get(topic)
        if partitions is None:
            raise AssertionError(f"topic {topic} does not exist")
        tps = [AioTopicPartition(topic, p) for p in sorted(partitions)]
        reader = await self._reader("read_committed" if read_committed else "read_uncommitted")
        low = await reader.beginning_offsets(tps)
        high = await reader.end_offsets(tps)
        return {tp.partition: (low[tp], high[tp]) for tp in tps}

    async def read_timestamps(self, topic: str, partition: int, offset: int) -> dict[int, int]:
        """offset → timestamp of every record from ``offset`` to the high watermark."""
        reader = await self._reader("read_uncommitted")
        tp = AioTopicPartition(topic, partition)
        high = (await reader.end_offsets([tp]))[tp]
        reader.assign([tp])
        reader.seek(tp, offset)
        found: dict[int, int] = {}
        deadline = time.monotonic() + 30.0
        while (await reader.position(tp)) < high:
            if time.monotonic() >= deadline:
                raise AssertionError(f"could not read {tp} up to {high}")
            batches = await reader.getmany(tp, timeout_ms=500)
            for record in batches.get(tp, []):
                found[record.offset] = record.timestamp
        return found

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit offsets for ``group`` without consuming or joining (assign() + commit)."""

        async def attempt() -> set[int]:
            consumer = AIOKafkaConsumer(**self._options, group_id=group, enable_auto_commit=False)
            await consumer.start()
            try:
                consumer.assign([AioTopicPartition(tp.topic, tp.partition) for tp in offsets])
                await consumer.commit(
                    {
                        AioTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
                        for tp, offset in offsets.items()
                    }
                )
            finally:
                await consumer.stop()
            return {0}

        await _while_coordinator_not_ready(f"commit {group}", attempt)

    async def commit_many(
        self, commits: Mapping[str, Mapping[TopicPartition, int]], *, in_flight: int = 32
    ) -> None:
        """Commit for many groups at once with raw OffsetCommit requests (generation -1, no
        member id), without a consumer per group: thousands of groups in seconds."""
        slots = asyncio.Semaphore(in_flight)

        async def one(group: str, offsets: Mapping[TopicPartition, int]) -> None:
            topics: dict[str, list[tuple[int, int, str]]] = {}
            for tp, offset in sorted(offsets.items()):
                topics.setdefault(tp.topic, []).append((tp.partition, offset, ""))
            request = OffsetCommitRequest(group, -1, "", -1, list(topics.items()))

            async def attempt() -> set[int]:
                async with slots:
                    node = await self._admin.find_coordinator(group)
                    response = await self._admin._send_request(request, node)
                return {code for _, parts in response.topics for _, code in parts}

            await _while_coordinator_not_ready(f"commit {group}", attempt)

        await asyncio.gather(*(one(group, offsets) for group, offsets in commits.items()))

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        """Every committed offset of ``group`` (OffsetFetch), as the broker stores it."""
        result = await self._admin.list_consumer_group_offsets(group)
        return {
            TopicPartition(tp.topic, tp.partition): meta.offset
            for tp, meta in result.items()
            if meta.offset >= 0
        }

    async def delete_group(self, group: str) -> None:
        """DeleteGroups (the group must have no members)."""

        async def attempt() -> set[int]:
            coordinator = await self._admin.find_coordinator(group)
            response = await self._admin._send_request(DeleteGroupsRequest([group]), coordinator)
            return {error_code for _, error_code in response.results}

        await _while_coordinator_not_ready(f"delete_group {group}", attempt)

    async def groups(self) -> dict[str, str]:
        """Group id → protocol type, from ListGroups (classic and KIP-848 groups alike)."""
        return dict(await self._admin.list_consumer_groups())

    # -- live group members

    @contextlib.asynccontextmanager
    async def classic_member(
        self,
        group: str,
        *topics: str,
        consume: bool = True,
        options: Mapping[str, Any] | None = None,
        within: float = 30.0,
    ) -> AsyncIterator[ClassicMember]:
        """A classic-protocol group member, subscribed to ``topics`` from the earliest offset.

        Yields once a partition assignment has arrived. With ``consume`` it polls in the
        background and auto-commits every 200 ms; without, it only heartbeats (lag grows).
        """
        settings: dict[str, Any] = {
            **self._options,
            "group_id": group,
            "auto_offset_reset": "earliest",
            "enable_auto_commit": consume,
            "auto_commit_interval_ms": 200,
            **(options or {}),
        }
        consumer = AIOKafkaConsumer(*topics, **settings)
        await consumer.start()
        member = ClassicMember(consumer)
        poller: asyncio.Task[None] | None = None
        try:
            if consume:

                async def poll() -> None:
                    while True:
                        batches = await consumer.getmany(timeout_ms=200)
                        member.consumed += sum(len(records) for records in batches.values())

                poller = asyncio.create_task(poll())

            async def assigned() -> bool:
                # aiokafka joins and syncs in its own coordinator task, no polling needed.
                return bool(consumer.assignment())

            await wait_until(assigned, within=within, message=f"{group} assignment")
            yield member
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await consumer.stop()

    @contextlib.asynccontextmanager
    async def console_consumer(
        self,
        topic: str,
        group: str,
        *,
        group_protocol: Literal["consumer", "classic"] = "consumer",
        extra_props: Mapping[str, str] | None = None,
        wait_joined: bool = True,
        within: float = 60.0,
    ) -> AsyncIterator[kafka_local.ConsoleConsumer]:
        """A Java console consumer in ``group``; ``group_protocol="consumer"`` is KIP-848.

        With ``wait_joined`` it yields once the group lists an active member (checked with the
        Java ``ConsumerGroupCommand``). Leaving the block stops the JVM.
        """
        handle = kafka_local.start_console_consumer(
            self.bootstrap,
            topic,
            group,
            group_protocol=group_protocol,
            extra_props={"auto.commit.interval.ms": "200", **(extra_props or {})},
        )
        try:
            if wait_joined:

                async def joined() -> bool:
                    if not handle.alive():
                        raise AssertionError(f"console consumer exited:\n{handle.output()}")
                    output = await asyncio.to_thread(
                        kafka_local.consumer_groups,
                        self.bootstrap,
                        "--describe",
                        "--members",
                        "--group",
                        group,
                    )
                    return any(line.split()[:1] == [group] for line in output.splitlines())

                await wait_until(joined, within=within, interval=0.5, message=f"{group} joined")
            yield handle
        finally:
            await asyncio.to_thread(handle.stop)


# -- stopping and restarting a broker (a dedicated cluster, never the session's) -------------


def stop_broker(cluster: kafka_local.KafkaCluster) -> None:
    node = cluster._nodes[0]
    assert node.process is not None
    node.process.stop(timeout=20)


def start_broker_again(cluster: kafka_local.KafkaCluster) -> None:
    """Start the stopped broker on the same ports and data (the harness has no restart, so
    this reuses its node layout and server.properties)."""
    node = cluster._nodes[0]
    node.process = kafka_local.launch_jvm(
        "kafka.Kafka",
        [str(node.directory / "server.properties")],
        name=f"kafka-broker-{node.node_id}",
        log_path=node.directory / "broker.log",
        jvm_options=cluster._jvm_options(),
        cleanup_dir=cluster.data_dir,
    )
    cluster._wait_ready()
