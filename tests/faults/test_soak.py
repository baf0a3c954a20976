"""A 1,000-cycle soak with churn and one broker restart in the middle.

``klag-pipeline run`` runs as a real process at poll_interval 100 ms against the fault broker.
A bounded churn loop commits new offsets, adds and deletes groups and topics and appends records;
half-way the broker is ``kill -9``ed and restarted on the same data directory. Cycles are
counted from the exporter's own ``klag_pipeline_cycles_total``; RSS and open descriptors are
read from /proc. RSS and descriptors must stay flat (a window after warm-up against the end) and
no cycle may fail outside the restart window (but for a few deadline overruns from the load of
a shared 2-core machine, each logged and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import free_port, sample_process
from klag_pipeline.model import TopicPartition
from tests.faults.broker import FaultsBroker
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(330)]

CYCLES = 1000
RESTART_AT = 500
WARM = (150, 300)
"""Cycles whose samples are the post-warm-up baseline (caches and pools fill before)."""
END_WINDOW = 150
RSS_TOLERANCE_MB = 10.0
"""Allowed growth of the median RSS from the warm window to the last 150 cycles. A leak of one
object per partition and cycle (~100 bytes x 40 series x 850 cycles) is ~3.4 MB; the slack
is for the allocator's arenas after a reconnect (a new aiokafka client) and GC timing."""
FD_TOLERANCE = 2
"""Allowed growth of the maximum open descriptors: one more broker connection is in flight
while the old one closes around a reconnect."""
RECOVERY_GRACE = 5.0
"""After the first successful cycle following the restart, failures are still allowed this long
(the restarted broker reloads the group coordinator)."""
OVERRUN = "cycle exceeded poll_interval"
OVERRUN_ALLOWANCE = 50
"""Failed cycles allowed outside the restart window, all of them deadline overruns (5 %): at
100 ms a cycle meets its deadline only while the process gets the CPU in time, and the suite
runs on a 2-core machine shared with other test runs (load average 4-8: 3 to 16 overruns per
1,000 cycles measured). Any other cause of a failed cycle fails the test; overruns are logged,
so each one is shown."""
SOAK_DEADLINE = 270.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Sample:
    at: float
    wall: float
    ok: float
    errors: float
    rss_mb: float
    fds: int


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def cycle_counts(text: str, cluster: str) -> tuple[float, float]:
    counts = {"ok": 0.0, "error": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "klag_pipeline_cycles_total" and (
                sample.labels.get("cluster_name") == cluster
            ):
                counts[sample.labels["outcome"]] = sample.value
    return counts["ok"], counts["error"]


class Churn:
    """Bounded churn on the broker's own listener: moving commits, groups and topics that come
    and go (at most ``KEEP`` of each kind alive), appended records."""

    KEEP = 4

    def __init__(self, kafka: KafkaTestClient, prefix: str, seed: int) -> None:
        self.kafka = kafka
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.topics: deque[str] = deque()
        self.groups: deque[str] = deque()
        self.high: dict[TopicPartition, int] = {}
        self.serial = 0
        self.steps = 0

    async def setup(self) -> None:
        for _ in range(self.KEEP):
            await self.add_topic()
        for _ in range(self.KEEP):
            await self.add_group()

    async def add_topic(self) -> None:
        self.serial += 1
        topic = f"{self.prefix}-t{self.serial}"
        await self.kafka.create_topic(topic, partitions=2)
        for p in range(2):
            offsets = await self.kafka.produce(topic, [Rec(b"x", partition=p)] * 5)
            self.high[TopicPartition(topic, p)] = offsets[-1] + 1
        self.topics.append(topic)

    async def add_group(self) -> None:
        self.serial += 1
        group = f"{self.prefix}-g{self.serial}"
        await self.kafka.commit(group, self.commits())
        self.groups.append(group)

    def commits(self) -> dict[TopicPartition, int]:
        return {tp: self.rng.randrange(0, high + 1) for tp, high in self.high.items()}

    async def step(self) -> None:
        self.steps += 1
        group = self.rng.choice(list(self.groups))
        await self.kafka.commit(group, self.commits())
        tp = self.rng.choice(sorted(self.high))
        offsets = await self.kafka.produce(tp.topic, [Rec(b"y", partition=tp.partition)] * 3)
        self.high[tp] = offsets[-1] + 1
        if self.steps % 5 == 0:
            await self.add_group()
            await self.kafka.delete_group(self.groups.popleft())
        if self.steps % 10 == 0:
            await self.add_topic()
            gone = self.topics.popleft()
            for p in range(2):
                self.high.pop(TopicPartition(gone, p), None)
            await self.kafka.delete_topic(gone)


async def test_a_thousand_cycles_with_churn_and_a_broker_restart_stay_flat(
    faults_broker: FaultsBroker,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    prefix = unique("soak")
    churn = Churn(truth, prefix, seed=18)
    await churn.setup()
    port = free_port()
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f"""\
[exporter]
poll_interval = "100ms"
http_host = "127.0.0.1"
http_port = {port}

[exporter.performance]
kafka_timeout = "2s"

[exporter.timestamp_sampling]
cache_ttl = "2s"

[[clusters]]
name = "soak"
bootstrap_servers = "{faults_broker.bootstrap}"
group_whitelist = ["^{prefix}-"]
topic_whitelist = ["^{prefix}-"]
""",
        encoding="utf-8",
    )
    log = tmp_path / "exporter.log"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "klag_pipeline",
        "run",
        str(settings),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    samples: list[Sample] = []
    restart: tuple[float, float] | None = None  # (killed, back) monotonic
    began = time.monotonic()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def sample() -> Sample:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    ok, errors = cycle_counts(await response.text(), "soak")
                proc = sample_process(process.pid)
                return Sample(
                    time.monotonic(), time.time(), ok, errors, proc.rss_bytes / 2**20, proc.open_fds
                )

            last_churn = 0.0
            while True:
                assert process.returncode is None, "the exporter exited"
                assert time.monotonic() - began < SOAK_DEADLINE, f"{len(samples)} samples"
                with contextlib.suppress(aiohttp.ClientError):
                    samples.append(await sample())
                done = samples[-1].ok + samples[-1].errors if samples else 0
                if done >= CYCLES:
                    break
                if restart is None and done >= RESTART_AT:
                    killed = time.monotonic()
                    await faults_broker.kill_and_restart()
                    restart = (killed, time.monotonic())
                elif time.monotonic() - last_churn >= 0.5 and done >= 10:
                    async with asyncio.timeout(30):
                        await churn.step()
                    last_churn = time.monotonic()
                await asyncio.sleep(0.1)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
    assert process.returncode == 0
    assert restart is not None

    # Outside the restart window (from the kill to RECOVERY_GRACE after the first good cycle
    # after it) no cycle fails for any reason but the machine's load (see OVERRUN_ALLOWANCE).
    killed, _ = restart
    before = [s for s in samples if s.at < killed]
    after_kill = [s for s in samples if s.at >= killed]
    recovered = next(s for s in after_kill if s.ok > before[-1].ok)
    settled = [s for s in after_kill if s.at >= recovered.at + RECOVERY_GRACE]
    assert settled, "the soak ended inside the restart window"
    outside = before[-1].errors + settled[-1].errors - settled[0].errors
    window = (before[-1].wall, recovered.wall + RECOVERY_GRACE)
    causes = [
        (record["timestamp"], record["error"])
        for record in map(json.loads, log.read_text().splitlines())
        if record.get("event") == "cluster_cycle_failed"
        and not window[0] <= _unix(record["timestamp"]) <= window[1]
    ]

    def cycles_of(s: Sample) -> float:
        return s.ok + s.errors

    warm = [s for s in samples if WARM[0] <= cycles_of(s) < WARM[1]]
    end = [s for s in samples if cycles_of(s) >= CYCLES - END_WINDOW]
    warm_rss, end_rss = (
        statistics.median(s.rss_mb for s in warm),
        statistics.median(s.rss_mb for s in end),
    )
    warm_fds, end_fds = max(s.fds for s in warm), max(s.fds for s in end)
    summary = (
        f"soak: {cycles_of(samples[-1]):.0f} cycles ({samples[-1].errors:.0f} failed) in "
        f"{samples[-1].at - began:.0f}s, restart {restart[1] - restart[0]:.1f}s, recovered after "
        f"{recovered.at - killed:.1f}s, {outside:.0f} overruns outside it; RSS median "
        f"{warm_rss:.1f} -> {end_rss:.1f} MiB, max fds "
        f"{warm_fds} -> {end_fds}; churn steps {churn.steps}"
    )
    print(summary)
    assert all(error.startswith(OVERRUN) for _, error in causes), causes
    assert outside <= OVERRUN_ALLOWANCE, (outside, causes, summary)
    assert end_rss <= warm_rss + RSS_TOLERANCE_MB, summary
    assert end_fds <= warm_fds + FD_TOLERANCE, summary
