"""Three sharded exporter processes on the real broker, next to one unsharded process.

~1,000 groups. After settling, the union of the three replicas' ``/metrics`` has every series of
the single process exactly once, with the same values for the offset families (the committed
state does not move during the test). Throughout, a sampler reads every replica's ``/metrics``
every 250 ms and records, per group, how long it was exported by two replicas at once
(duplicates) or by none (gaps). Then: kill -9 one replica (its groups must reappear on the
others within session timeout + heartbeat + poll interval, with slack), start it again (buckets
move back, no duplicate beyond one poll interval), SIGTERM another (LeaveGroup: the others take
over within a few heartbeats). The measured times are printed and recorded as test properties;
docs/scaling.md reports them.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from klag_pipeline.model import TopicPartition
from tests.leadership.test_processes import Replica, free_port
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.shards import HEARTBEAT, POLL, SESSION, sharded_settings, stop_all
from tests.support.waiting import wait_until

GROUPS = 1000
TOPICS = 20
PARTITIONS = 4
RECORDS = 30
# Process start-up, a cycle of 1,000 groups and the sampling period on a busy 2-core machine.
SLACK = 4.0
SAMPLE_EVERY = 0.25

_SUM_LAG = re.compile(r'^kafka_consumergroup_group_sum_lag\{[^}]*group="([^"]+)"', re.M)
_OWNS = re.compile(r'^klag_pipeline_shard_buckets\{cluster_name="shards"\} [1-9]', re.M)
_SERIES = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")
# Values that depend on when a process observed the state, not on the state itself.
_TIME_DEPENDENT = ("seconds", "timestamp", "_rate", "velocity", "duration", "poll_time")
# Every replica exports its own cycle figures and self-metrics (docs/scaling.md).
_PER_REPLICA = (
    "kafka_lag_exporter_",
    "klag_pipeline_",
    "kafka_consumergroup_poll_time_ms",
)
_OFFSET_FAMILIES = (
    "kafka_consumergroup_group_offset",
    "kafka_consumergroup_group_lag",
    "kafka_consumergroup_group_sum_lag",
    "kafka_consumergroup_group_max_lag",
    "kafka_consumergroup_group_topic_sum_lag",
    "kafka_partition_latest_offset",
    "kafka_partition_earliest_offset",
)


def series(text: str) -> dict[str, str]:
    """Series name+labels → value, without comments and per-replica families."""
    result = {}
    for line in text.splitlines():
        match = _SERIES.match(line)
        if match is None or match.group(1).startswith(_PER_REPLICA):
            continue
        result[match.group(1) + (match.group(2) or "")] = match.group(3)
    return result


@dataclass
class Coverage:
    """Per group: how many replicas exported it at each sample, and the longest runs of two or
    more (duplicates) and of none (gaps)."""

    groups: frozenset[str]
    samples: int = 0
    longest_duplicate: float = 0.0
    longest_gap: float = 0.0
    _dup_since: dict[str, float] = field(default_factory=dict)
    _gap_since: dict[str, float] = field(default_factory=dict)

    def observe(self, exported: list[set[str]], now: float) -> None:
        self.samples += 1
        counts: dict[str, int] = {}
        for groups in exported:
            for group in groups:
                counts[group] = counts.get(group, 0) + 1
        for group in self.groups:
            n = counts.get(group, 0)
            self._run(self._dup_since, group, n > 1, now, "longest_duplicate")
            self._run(self._gap_since, group, n == 0, now, "longest_gap")

    def _run(self, since: dict[str, float], group: str, on: bool, now: float, attr: str) -> None:
        if on:
            began = since.setdefault(group, now)
            setattr(self, attr, max(getattr(self, attr), now - began))
        else:
            since.pop(group, None)

    def reset_gaps(self) -> None:
        """Forget gaps so far (a killed replica's groups are missing until someone takes over,
        which the test measures separately)."""
        self._gap_since.clear()
        self.longest_gap = 0.0


@dataclass
class Fleet:
    tmp: Path
    bootstrap: str
    prefix: str
    session: aiohttp.ClientSession
    replicas: dict[str, Replica] = field(default_factory=dict)
    coverage: Coverage | None = None
    _sampler: asyncio.Task[None] | None = None

    def start(self, name: str, sharded: bool = True) -> Replica:
        replica = self.replicas.get(name)
        if replica is None:
            port = free_port()
            path = self.tmp / f"{name}.toml"
            path.write_text(
                sharded_settings(
                    port,
                    self.bootstrap,
                    cluster="shards",
                    prefix=self.prefix,
                    identity=name if sharded else None,
                    sampling=False,
                )
            )
            replica = Replica(name, port, path, self.tmp / f"{name}.log")
            self.replicas[name] = replica
        replica.start()
        return replica

    async def metrics(self, replica: Replica) -> str | None:
        if not replica.alive:
            return None
        try:
            async with self.session.get(f"http://127.0.0.1:{replica.port}/metrics") as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    def sharded(self) -> list[Replica]:
        return [r for n, r in self.replicas.items() if n != "single"]

    async def exported_groups(self) -> list[set[str]]:
        texts = await asyncio.gather(*(self.metrics(r) for r in self.sharded()))
        return [set(_SUM_LAG.findall(t)) if t else set() for t in texts]

    async def _sample(self) -> None:
        assert self.coverage is not None
        while True:
            exported = await self.exported_groups()
            self.coverage.observe(exported, time.monotonic())
            await asyncio.sleep(SAMPLE_EVERY)

    def sample(self, groups: frozenset[str]) -> Coverage:
        self.coverage = Coverage(groups)
        self._sampler = asyncio.create_task(self._sample())
        return self.coverage

    async def covered(self, groups: frozenset[str]) -> float:
        """Seconds until every group is exported by exactly one live replica."""
        began = time.monotonic()

        async def exactly_once() -> bool:
            exported = await self.exported_groups()
            seen = [g for groups_ in exported for g in groups_]
            return len(seen) == len(set(seen)) and set(seen) == groups

        await wait_until(
            exactly_once,
            within=SESSION + HEARTBEAT + POLL + SLACK + 30,
            interval=0.1,
            message="every group exported exactly once",
            details=self.logs,
        )
        return time.monotonic() - began

    def logs(self) -> str:
        return "\n".join(r.tail(8) for r in self.replicas.values())

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        stop_all(self.replicas.values())


async def seed(kafka: KafkaTestClient, prefix: str) -> frozenset[str]:
    """Topics with records and ~1,000 groups committed at fixed, different offsets."""
    for t in range(TOPICS):
        topic = f"{prefix}-t{t:02d}"
        await kafka.create_topic(topic, PARTITIONS)
        records = [Rec(b"x", partition=p) for p in range(PARTITIONS) for _ in range(RECORDS)]
        await kafka.produce(topic, records)
    commits = {
        f"{prefix}-g{g:04d}": {
            TopicPartition(f"{prefix}-t{g % TOPICS:02d}", p): (g + p) % RECORDS
            for p in (g % PARTITIONS, (g + 1) % PARTITIONS)
        }
        for g in range(GROUPS)
    }
    await kafka.commit_many(commits)
    return frozenset(commits)


@pytest.fixture
async def fleet(
    tmp_path: Path, kafka_bootstrap: str, unique: Callable[[str], str]
) -> AsyncIterator[Fleet]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
        running = Fleet(tmp_path, kafka_bootstrap, unique("shard"), session)
        try:
            yield running
        finally:
            await running.close()


def report(record_property: Callable[[str, object], None], name: str, seconds: float) -> None:
    record_property(name, round(seconds, 2))
    print(f"\n{name}: {seconds:.2f}s")


async def test_three_replicas_export_what_one_process_does_and_cover_for_each_other(
    fleet: Fleet, kafka: KafkaTestClient, record_property: Callable[[str, object], None]
) -> None:
    groups = await seed(kafka, fleet.prefix)
    single = fleet.start("single", sharded=False)
    began = time.monotonic()
    for name in ("r1", "r2", "r3"):
        fleet.start(name)

    async def all_assigned() -> bool:
        texts = await asyncio.gather(*(fleet.metrics(r) for r in fleet.sharded()))
        return all(t and _OWNS.search(t) for t in texts)

    await wait_until(
        all_assigned, within=60, message="three replicas own buckets", details=fleet.logs
    )
    await fleet.covered(groups)
    report(record_property, "start_to_settled", time.monotonic() - began)

    # The union equals the single process, series for series; offset values are equal.
    async def union_matches() -> str | None:
        reference_text = await fleet.metrics(single)
        texts = await asyncio.gather(*(fleet.metrics(r) for r in fleet.sharded()))
        if reference_text is None or any(t is None for t in texts):
            return "a process did not answer"
        reference = series(reference_text)
        union: dict[str, str] = {}
        for text in texts:
            assert text is not None
            for key, value in series(text).items():
                assert key not in union, f"{key} exported twice"
                union[key] = value
        if set(union) != set(reference):
            missing, extra = set(reference) - set(union), set(union) - set(reference)
            return f"{len(missing)} missing, {len(extra)} extra"
        differing = [
            key
            for key, value in reference.items()
            if key.startswith(_OFFSET_FAMILIES)
            and not any(w in key for w in _TIME_DEPENDENT)
            and union[key] != value
        ]
        return f"values differ: {differing[:5]}" if differing else None

    last: list[str | None] = [None]

    async def matches() -> bool:
        last[0] = await union_matches()
        return last[0] is None

    # Both sides refresh every second; the committed state itself does not move.
    await wait_until(
        matches,
        within=10,
        interval=POLL / 2,
        message="the union equal to the single process",
        details=lambda: f"{last[0]}\n{fleet.logs()}",
    )
    reference = series(await fleet.metrics(single) or "")
    assert sum(k.startswith("kafka_consumergroup_group_lag{") for k in reference) == 2 * GROUPS

    # Every replica owns about a third of the buckets and says so.
    for replica in fleet.sharded():
        text = await fleet.metrics(replica) or ""
        owned = re.search(
            r'^klag_pipeline_shard_buckets\{cluster_name="shards"\} (\S+)', text, re.M
        )
        assert owned is not None, fleet.logs()
        assert float(owned.group(1)) in (21.0, 22.0)

    coverage = fleet.sample(groups)
    killed = fleet.replicas["r2"]
    killed.signal(signal.SIGKILL)
    killed.wait(10)
    took_over = await fleet.covered(groups)
    report(record_property, "kill9_to_full_coverage", took_over)
    assert took_over <= SESSION + HEARTBEAT + POLL + SLACK, fleet.logs()

    coverage.reset_gaps()
    fleet.start("r2")

    async def r2_owns_buckets() -> bool:
        text = await fleet.metrics(killed) or ""
        return bool(
            re.search(r'^klag_pipeline_shard_groups\{cluster_name="shards"\} [1-9]', text, re.M)
        )

    await wait_until(
        r2_owns_buckets, within=30, message="r2 exports groups again", details=fleet.logs
    )
    report(record_property, "restart_to_full_coverage", await fleet.covered(groups))

    rebalance_gap = coverage.longest_gap
    report(record_property, "rejoin_longest_gap", rebalance_gap)
    assert rebalance_gap <= SESSION + POLL, fleet.logs()

    terminated = fleet.replicas["r3"]
    coverage.reset_gaps()
    began = time.monotonic()
    terminated.signal(signal.SIGTERM)
    assert terminated.wait(15) == 0
    await fleet.covered(groups)
    report(record_property, "sigterm_to_full_coverage", time.monotonic() - began)
    report(record_property, "sigterm_longest_gap", coverage.longest_gap)
    report(record_property, "longest_duplicate", coverage.longest_duplicate)
    assert coverage.samples > 20
    # A bucket's old owner drops it when the new assignment arrives, before its new owner's
    # next cycle ends: any overlap is shorter than one poll interval (plus the sampling period).
    assert coverage.longest_duplicate <= POLL + SAMPLE_EVERY, fleet.logs()
