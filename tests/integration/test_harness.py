"""The real-Kafka harness proves itself: what the helpers create is what a plain client reads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import TopicPartition as AioTopicPartition

from devtools import kafka_local
from devtools.kafka_local import KafkaCluster, SaslListener, ScramUser, SslListener
from klag_pipeline.model import TopicPartition
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

DAY_MS = 24 * 3600 * 1000
REPO = Path(__file__).resolve().parents[2]


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
async def test_record_timestamps_read_back_exactly(
    kafka: KafkaTestClient, unique: Callable[[str], str], compression: Any
) -> None:
    topic = unique("ts")
    await kafka.create_topic(topic)
    stamps = [_now_ms() - DAY_MS, 1_600_000_000_123, _now_ms() + DAY_MS]
    records = [Rec(f"v{i}".encode(), timestamp_ms=ts, key=b"k") for i, ts in enumerate(stamps)]

    offsets = await kafka.produce(topic, records, compression=compression, one_batch=True)
    offsets += await kafka.produce(topic, records[:1], compression=compression)

    assert offsets == [0, 1, 2, 3]
    read = await kafka.read_timestamps(topic, 0, 0)
    assert read == {0: stamps[0], 1: stamps[1], 2: stamps[2], 3: stamps[0]}


async def test_committed_offsets_are_visible_to_a_plain_consumer(
    kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("commit"), unique("group")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"a", partition=0)] * 5 + [Rec(b"b", partition=1)] * 2)

    await kafka.commit(group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 2})

    plain = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    await plain.start()
    try:
        seen = {p: await plain.committed(AioTopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await plain.stop()
    assert seen == {0: 3, 1: 2}
    assert await kafka.committed(group) == {
        TopicPartition(topic, 0): 3,
        TopicPartition(topic, 1): 2,
    }


async def test_delete_records_moves_the_low_watermark(
    kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic = unique("retention")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x")] * 10 + [Rec(b"y", partition=1)] * 3)
    assert await kafka.watermarks(topic) == {0: (0, 10), 1: (0, 3)}

    assert await kafka.delete_records(topic, {0: 4}) == {0: 4}

    assert await kafka.watermarks(topic) == {0: (4, 10), 1: (0, 3)}


async def test_transactions_leave_markers_and_hide_aborted_records(
    kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic = unique("txn")
    await kafka.create_topic(topic)

    committed = await kafka.produce_transactional(topic, [Rec(b"c1"), Rec(b"c2")], commit=True)
    aborted = await kafka.produce_transactional(topic, [Rec(b"a1")], commit=False)

    # Each transaction is followed by one control record (its commit or abort marker).
    assert committed == [0, 1]
    assert aborted == [3]
    assert await kafka.watermarks(topic) == {0: (0, 5)}
    assert await kafka.watermarks(topic, read_committed=True) == {0: (0, 5)}
    assert sorted(await kafka.read_timestamps(topic, 0, 0)) == [0, 1, 3]


async def test_topic_and_group_lifecycle(
    kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic, group = unique("life"), unique("group")
    await kafka.create_topic(topic, partitions=1, config={"cleanup.policy": "compact"})
    await kafka.add_partitions(topic, 3)
    assert set(await kafka.watermarks(topic)) == {0, 1, 2}

    await kafka.commit(group, {TopicPartition(topic, 2): 0})
    assert await kafka.committed(group) == {TopicPartition(topic, 2): 0}
    await kafka.delete_group(group)
    assert await kafka.committed(group) == {}
    assert group not in await kafka.groups()

    await kafka.delete_topic(topic)
    with pytest.raises(AssertionError, match="does not exist"):
        await kafka.watermarks(topic)


async def test_kip848_and_classic_groups_have_their_group_types(
    kafka: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic = unique("types")
    modern, classic = unique("kip848"), unique("classic")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"1"), Rec(b"2", partition=1)])

    async with (
        kafka.console_consumer(topic, modern, group_protocol="consumer"),
        kafka.classic_member(classic, topic) as member,
    ):
        await member.wait_consumed(2)
        types = await asyncio.to_thread(kafka_local.list_group_types, kafka.bootstrap)

    assert types[modern] == "consumer"
    assert types[classic] == "classic"


# ----------------------------------------------------------------------------------------------
# Security listeners: one extra cluster for the whole module.

SASL_USERS = {
    "PLAIN": ("alice", "alice-secret"),
    "SCRAM-SHA-256": ("bob", "bob-secret"),
    "SCRAM-SHA-512": ("carol", "carol-secret"),
}


@pytest.fixture(scope="module")
def secured_cluster() -> Iterator[KafkaCluster]:
    sasl = SaslListener(
        plain_users={SASL_USERS["PLAIN"][0]: SASL_USERS["PLAIN"][1]},
        scram_users=(
            ScramUser(*SASL_USERS["SCRAM-SHA-256"], mechanism="SCRAM-SHA-256"),
            ScramUser(*SASL_USERS["SCRAM-SHA-512"], mechanism="SCRAM-SHA-512"),
        ),
    )
    sasl_ssl = SaslListener(name="SASL_SSL", scram_users=sasl.scram_users, tls=True)
    cluster = KafkaCluster(1, listeners=[sasl, SslListener(client_auth="required"), sasl_ssl])
    with cluster:
        yield cluster


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    opened: list[KafkaTestClient] = []

    async def make(bootstrap: str, **options: Any) -> KafkaTestClient:
        async with asyncio.timeout(60):
            client = await KafkaTestClient.connect(bootstrap, options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.close()


async def _round_trip(client: KafkaTestClient, topic: str) -> None:
    await client.create_topic(topic)
    assert await client.produce(topic, [Rec(b"secret-free payload", timestamp_ms=42)]) == [0]
    assert await client.read_timestamps(topic, 0, 0) == {0: 42}


@pytest.mark.parametrize("mechanism", sorted(SASL_USERS))
async def test_sasl_plaintext_listener_accepts_matching_users(
    secured_cluster: KafkaCluster,
    connect: Callable[..., Any],
    unique: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
    mechanism: str,
) -> None:
    user, password = SASL_USERS[mechanism]
    endpoint = secured_cluster.listener("SASL_PLAINTEXT")
    assert endpoint.security_protocol == "SASL_PLAINTEXT"
    options = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
    }

    client = await connect(endpoint.bootstrap, sasl_plain_password=password, **options)
    await _round_trip(client, unique("sasl"))

    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await connect(endpoint.bootstrap, sasl_plain_password="wrong", **options)
    assert "SaslAuthenticationFailed" in caplog.text


async def test_ssl_listener_requires_a_client_certificate(
    secured_cluster: KafkaCluster, connect: Callable[..., Any], unique: Callable[[str], str]
) -> None:
    tls = secured_cluster.tls
    assert tls is not None
    endpoint = secured_cluster.listener("SSL")
    with_cert = create_ssl_context(
        cafile=tls.ca_cert, certfile=tls.client_cert, keyfile=tls.client_key
    )

    client = await connect(endpoint.bootstrap, security_protocol="SSL", ssl_context=with_cert)
    await _round_trip(client, unique("ssl"))

    without_cert = create_ssl_context(cafile=tls.ca_cert)
    with pytest.raises(KafkaConnectionError):
        await connect(endpoint.bootstrap, security_protocol="SSL", ssl_context=without_cert)


async def test_sasl_ssl_listener_accepts_scram_over_tls(
    secured_cluster: KafkaCluster, connect: Callable[..., Any], unique: Callable[[str], str]
) -> None:
    tls = secured_cluster.tls
    assert tls is not None
    user, password = SASL_USERS["SCRAM-SHA-512"]
    client = await connect(
        secured_cluster.listener("SASL_SSL").bootstrap,
        security_protocol="SASL_SSL",
        ssl_context=create_ssl_context(cafile=tls.ca_cert),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=password,
    )
    await _round_trip(client, unique("sasl-ssl"))


# ----------------------------------------------------------------------------------------------
# No JVM outlives its owner.


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_three_broker_cluster_stops_without_leaving_a_jvm(
    unique: Callable[[str], str],
) -> None:
    cluster = KafkaCluster(3)
    await asyncio.to_thread(cluster.start)
    try:
        groups = [process.pgid for process in cluster.processes]
        pid_files = [process.pid_file for process in cluster.processes]
        data_dir = cluster.data_dir
        assert len(groups) == 3
        assert all(path.is_file() for path in pid_files)
        client = await KafkaTestClient.connect(cluster.bootstrap)
        try:
            topic = unique("replicated")
            await client.create_topic(topic, partitions=3, replication_factor=3)
            assert await client.produce(topic, [Rec(b"r", partition=2)]) == [0]
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(cluster.stop)

    assert all(_group_gone(pgid) for pgid in groups)
    assert data_dir is not None
    assert not data_dir.exists()
    assert not any(path.exists() for path in pid_files)


async def _start_cli_owner(
    run: Path, stop_with: signal.Signals
) -> tuple[dict[str, Any], Path, int]:
    """Run ``python -m devtools.kafka_local start`` until ready, then send it ``stop_with``.

    Returns the broker's pid-file record, the pid file and the owner's exit status.
    """
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.kafka_local",
        "start",
        cwd=REPO,
        env={**os.environ, "KLAG_KAFKA_RUN_DIR": str(run)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert owner.stdout is not None
        async with asyncio.timeout(120):
            first = (await owner.stdout.readline()).decode()
        assert first.startswith("bootstrap=127.0.0.1:"), first
        (pid_file,) = await asyncio.to_thread(lambda: list(run.glob("*.json")))
        record = json.loads(await asyncio.to_thread(pid_file.read_text))
        assert not _group_gone(record["pgid"])
    finally:
        owner.send_signal(stop_with)
        async with asyncio.timeout(60):
            status = await owner.wait()
    return record, pid_file, status


async def test_a_terminated_owner_stops_and_cleans_up_its_broker(tmp_path: Path) -> None:
    run = tmp_path / "run"
    try:
        record, pid_file, status = await _start_cli_owner(run, signal.SIGTERM)

        assert status == -signal.SIGTERM  # the default action still happens after cleanup
        assert _group_gone(record["pgid"])
        assert not await asyncio.to_thread(pid_file.exists)
        assert not await asyncio.to_thread(Path(record["cleanup_dir"]).exists)
    finally:
        await asyncio.to_thread(kafka_local.reap, directory=run)


async def test_a_killed_owner_takes_its_broker_with_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "KLAG_KAFKA_RUN_DIR": str(run)}
    # SIGKILL: no atexit and no signal handler runs in the owner; only PDEATHSIG can help.
    record, pid_file, _ = await _start_cli_owner(run, signal.SIGKILL)
    try:
        await wait_until(
            lambda: _group_gone(record["pgid"]), within=30, interval=0.05, message="broker gone"
        )
        # The stale pid file and data directory are what the next start/stop-all clean up.
        assert pid_file.exists()
        stop_all = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "devtools.kafka_local",
            "stop-all",
            "--orphans",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert await stop_all.wait() == 0
        assert not await asyncio.to_thread(pid_file.exists)
        assert not await asyncio.to_thread(Path(record["cleanup_dir"]).exists)
    finally:
        # Should the broker have survived its owner, it must not outlive this test either.
        await asyncio.to_thread(kafka_local.reap, directory=run)


def test_reap_stops_an_orphan_recorded_in_a_pid_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    leftovers = tmp_path / "data"
    leftovers.mkdir()
    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    tag = "0123456789abcdef"
    # Stands in for a JVM left by a kill -9'ed run without PDEATHSIG: what matters to the reaper
    # is the tag on the command line and a dead owner.
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", f"-Dklag.kafka_local.id={tag}"],
        start_new_session=True,
    )
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        for process, owner, cleanup in (
            (orphan, dead_owner.pid, leftovers),
            (bystander, dead_owner.pid, None),
        ):
            record = {
                "pid": process.pid,
                "pgid": process.pid,
                "tag": tag,
                "owner_pid": owner,
                "cleanup_dir": str(cleanup) if cleanup else None,
            }
            (run / f"{process.pid}.json").write_text(json.dumps(record))

        stopped = kafka_local.reap(directory=run)

        assert stopped == [orphan.pid]
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert bystander.poll() is None, "a pid without our tag must never be signalled"
        assert not leftovers.exists()
        assert list(run.iterdir()) == []
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()
