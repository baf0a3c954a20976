"""`make demo`: a local Kafka, a small workload and the exporter on an embedded settings file.

Starts a single-node Kafka 4.x from the pinned jars, creates four topics and runs:
- ``demo-orders-fast``: a consumer that keeps up (lag ≈ 0),
- ``demo-orders-slow``: a consumer that reads one record per second (lag and time lag grow;
  LAGGING, or STALLED for a partition its one-record polls do not reach for 20 s),
- ``demo-payments-stopped``: a group that committed once and has no member (Empty, lag grows):
  STOPPED,
- ``demo-payments-stalled``: a member that polls and never commits while records arrive: STALLED,
- ``demo-payments-kip848``: a Java consumer with ``group.protocol=consumer`` (KIP-848),
- ``demo-shipments-lagging``: consumes 5 records/s of the 10/s produced: LAGGING, catch-up never,
- ``demo-shipments-backfill``: works off a backlog at 30/s against 10/s produced: OK with a
  finite catch-up time (time lag and catch-up time side by side, two different figures),
- ``demo-audit-idle``: a group halfway through records stamped an hour ago on a topic nobody
  produces to any more (time lag ≈ 3600 s and growing: the idle-producer case),
then the exporter, prints the URLs, a ``once --window`` table after HEALTH_WINDOW seconds (the
demo's ``[exporter.health]`` thresholds are short enough for every status above to show by then),
and runs until Ctrl-C or ``KLAG_DEMO_SECONDS`` (default 900) have passed. Everything stops cleanly
on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from devtools import kafka_local
from klag_pipeline import app
from klag_pipeline.commands.once import collect, collect_once
from klag_pipeline.output import render_table
from klag_pipeline.settings.loader import load_settings
from klag_pipeline.settings.schema import Settings
from klag_pipeline.snapshot import ClusterSnapshot
from klag_pipeline.telemetry import runtime
from klag_pipeline.telemetry.logging import configure_logging

SETTINGS_FILE = Path(__file__).with_name("demo_settings.toml")
PRODUCE_PER_SECOND = 10
HOUR_MS = 3_600_000
BACKLOG = 3000  # demo-shipments-backfill works it off at 20/s net: catch-up ≈ 150 s at first
# The printed table's run: the demo's stalled_after / stopped_after (20s) fit in it.
HEALTH_WINDOW = 30.0


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """``[demo] <name> …`` before a start-up step and ``[demo] <name> … N s`` after it, so the
    first minute is never silent."""
    print(f"[demo] {name} …", flush=True)
    started = time.monotonic()
    yield
    print(f"[demo] {name} … {time.monotonic() - started:.0f} s", flush=True)


async def create_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic("demo-orders", 3, 1),
                NewTopic("demo-payments", 2, 1),
                NewTopic("demo-audit", 1, 1),
                NewTopic("demo-shipments", 1, 1),
            ]
        )
    finally:
        await admin.close()


async def seed(bootstrap: str) -> None:
    """History for the idle-producer group, a backlog for the backfill group and a first commit
    for the stopped and the stalled groups."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        hour_ago = int(time.time() * 1000) - HOUR_MS
        for i in range(100):
            await producer.send("demo-audit", b"audit", timestamp_ms=hour_ago + i * 1000)
        for i in range(20):
            await producer.send("demo-payments", b"payment", partition=i % 2)
        for _ in range(BACKLOG):
            await producer.send("demo-shipments", b"shipment")
        await producer.flush()
    finally:
        await producer.stop()
    payments = {TopicPartition("demo-payments", 0): 5, TopicPartition("demo-payments", 1): 5}
    for group, offsets in (
        ("demo-audit-idle", {TopicPartition("demo-audit", 0): 50}),
        ("demo-payments-stopped", payments),
        ("demo-payments-stalled", payments),
    ):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        finally:
            await consumer.stop()


async def produce_forever(bootstrap: str, stop: asyncio.Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        while not stop.is_set():
            for _ in range(PRODUCE_PER_SECOND):
                await producer.send("demo-orders", b"order")
                await producer.send("demo-payments", b"payment")
                await producer.send("demo-shipments", b"shipment")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await producer.stop()


async def consume(
    bootstrap: str,
    group: str,
    stop: asyncio.Event,
    *,
    per_second: int,
    topic: str = "demo-orders",
    commit: bool = True,
) -> None:
    """``commit=False``: a member that polls (so it stays in the group) and never commits."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=commit,
        auto_commit_interval_ms=1000,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            await consumer.getmany(timeout_ms=500, max_records=per_second)
            if per_second < 100:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await consumer.stop()


async def wait_ready(port: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /ready HTTP/1.0\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return True
        await asyncio.sleep(0.5)
    return False


EXPECTED_GROUPS = frozenset(
    {
        "demo-orders-fast",
        "demo-orders-slow",
        "demo-payments-stopped",
        "demo-payments-kip848",
        "demo-payments-stalled",
        "demo-shipments-lagging",
        "demo-shipments-backfill",
        "demo-audit-idle",
    }
)


async def first_full_table(
    settings: Settings,
) -> tuple[list[ClusterSnapshot], list[tuple[str, str]]]:
    """One cycle, repeated (at most 30 s) until every demo group has joined and committed."""
    deadline = time.monotonic() + 30
    while True:
        snapshots, errors = await collect_once(settings)
        committed = {row.group for s in snapshots for row in s.rows}
        if committed >= EXPECTED_GROUPS or time.monotonic() > deadline:
            return snapshots, errors
        await asyncio.sleep(1.0)


async def demo(bootstrap: str, seconds: float) -> None:
    environ = {**os.environ, "KLAG_DEMO_BOOTSTRAP": bootstrap}
    settings = load_settings(SETTINGS_FILE, environ).settings
    port = settings.exporter.http_port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    with phase("topics, an hour-old history, a backlog and first commits"):
        await create_topics(bootstrap)
        await seed(bootstrap)
    with phase("the KIP-848 consumer (a Java console consumer)"):
        kip848 = kafka_local.start_console_consumer(
            bootstrap,
            "demo-payments",
            "demo-payments-kip848",
            group_protocol="consumer",
            extra_props={"auto.commit.interval.ms": "1000"},
        )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(produce_forever(bootstrap, stop))
            tasks.create_task(consume(bootstrap, "demo-orders-fast", stop, per_second=10_000))
            tasks.create_task(consume(bootstrap, "demo-orders-slow", stop, per_second=1))
            tasks.create_task(
                consume(
                    bootstrap,
                    "demo-payments-stalled",
                    stop,
                    per_second=1,
                    topic="demo-payments",
                    commit=False,
                )
            )
            for group, rate in (("demo-shipments-lagging", 5), ("demo-shipments-backfill", 30)):
                tasks.create_task(
                    consume(bootstrap, group, stop, per_second=rate, topic="demo-shipments")
                )
            tasks.create_task(app.serve(settings, stop=stop, settle=True))
            with phase(f"the exporter on port {port} and the workload"):
                ready = await wait_ready(port, within=60)
            if not ready:
                print("the exporter did not become ready within 60 s", file=sys.stderr)
                stop.set()
                return
            with phase("until every demo group has joined and committed (at most 30 s)"):
                await first_full_table(settings)
            print(
                f"\nklag-pipeline demo is running (Kafka at {bootstrap})\n"
                f"  metrics:  http://127.0.0.1:{port}/metrics\n"
                f"  status:   http://127.0.0.1:{port}/  (consumer status, catch-up time)\n"
                f"  health:   http://127.0.0.1:{port}/health   ready: http://127.0.0.1:{port}/ready\n"
                f"  yourself: KLAG_DEMO_BOOTSTRAP={bootstrap} klag-pipeline once --window 30s"
                f" {SETTINGS_FILE}\n"
                f"            KLAG_DEMO_BOOTSTRAP={bootstrap} klag-pipeline status"
                f" demo-payments-stalled {SETTINGS_FILE}\n"
                f"  stops by itself after {seconds:.0f} s; Ctrl-C stops it now.\n\n"
                f"Evaluating health for {HEALTH_WINDOW:.0f} s (once --window): expect"
                " demo-payments-stalled STALLED, demo-payments-stopped STOPPED,"
                " demo-shipments-lagging LAGGING with catch-up never, demo-shipments-backfill OK"
                " with a catch-up time.\n",
                flush=True,
            )
            snapshots, failures = await collect(settings, window=HEALTH_WINDOW)
            print(render_table(snapshots, tty=sys.stdout.isatty()))
            for failure in failures:
                print(f"cluster {failure.cluster} failed: {failure.message}", file=sys.stderr)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=seconds)
            stop.set()
    finally:
        await asyncio.to_thread(kip848.stop)


def main() -> None:
    # Warnings and errors only; aiokafka, which the workload's own producers and consumers use,
    # is silent below debug (QUIET_LIBRARIES): its retries while the fresh broker elects group
    # coordinators ("coordinator not available") are normal here and not the exporter's.
    configure_logging(os.environ.get("KLAG_DEMO_LOG_LEVEL", "warning"), None)
    seconds = float(os.environ.get("KLAG_DEMO_SECONDS", "900"))
    kafka_local.ensure_fetched()
    java = kafka_local.java()
    cluster = kafka_local.KafkaCluster(1)
    with phase(
        f"a single-node Kafka {kafka_local.KAFKA_VERSION} on Java {java.version} ({java.source})"
    ):
        cluster.start()
    try:
        runtime.tune_process()  # as `klag-pipeline run` does
        asyncio.run(demo(cluster.bootstrap, seconds))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
