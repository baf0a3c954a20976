"""Demo workload: a producer and three consumer groups that show every dashboard row.

- ``orders`` (3 partitions) gets ``--rate`` messages/s; group ``orders-fast`` keeps up,
  ``orders-slow`` consumes a fraction of the rate, so its offset and time lag grow.
- ``audit`` has a short retention; group ``audit-stopped`` commits offset 0 once and never comes
  back, so retention soon deletes messages it has not read: the data-loss panels and the
  KafkaConsumerGroupDataLoss alert light up.

    python workload.py --bootstrap kafka:9092 [--rate 20] [--duration 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata

ORDERS = "orders"
AUDIT = "audit"
AUDIT_TOPIC_CONFIG = {"retention.ms": "60000", "segment.ms": "10000"}


async def create_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for topic in (
            NewTopic(ORDERS, 3, 1),
            NewTopic(AUDIT, 1, 1, topic_configs=AUDIT_TOPIC_CONFIG),
        ):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()


async def produce(bootstrap: str, rate: float, until: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sequence = 0
        while time.monotonic() < until:
            payload = f'{{"order": {sequence}}}'.encode()
            await producer.send(ORDERS, payload, key=str(sequence % 97).encode())
            await producer.send(AUDIT, payload)
            sequence += 1
            await asyncio.sleep(1.0 / rate)
    finally:
        await producer.stop()


async def consume(bootstrap: str, group: str, per_second: float | None, until: float) -> None:
    consumer = AIOKafkaConsumer(
        ORDERS,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        max_poll_records=10 if per_second else 500,
    )
    await consumer.start()
    try:
        while time.monotonic() < until:
            batches = await consumer.getmany(timeout_ms=500)
            consumed = sum(len(records) for records in batches.values())
            if per_second and consumed:
                await asyncio.sleep(consumed / per_second)
    finally:
        await consumer.stop()


async def commit_once(bootstrap: str, group: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        partition = TopicPartition(AUDIT, 0)
        consumer.assign([partition])
        await consumer.commit({partition: OffsetAndMetadata(0, "")})
    finally:
        await consumer.stop()


async def main(bootstrap: str, rate: float, duration: float) -> None:
    # duration 0 runs until the container stops; a year is "forever" for a demo.
    until = time.monotonic() + (duration or 365 * 86400.0)
    await create_topics(bootstrap)
    await commit_once(bootstrap, "audit-stopped")
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(produce(bootstrap, rate, until))
        tasks.create_task(consume(bootstrap, "orders-fast", None, until))
        tasks.create_task(consume(bootstrap, "orders-slow", rate / 4, until))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="kafka:9092")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second per topic")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = forever")
    args = parser.parse_args()
    asyncio.run(main(args.bootstrap, args.rate, args.duration))
