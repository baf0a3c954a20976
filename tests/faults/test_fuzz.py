"""Malformed responses: the exporter never crashes, never exports a wrong value, and recovers.

The exporter runs in this process against the fault broker through the :class:`FaultProxy`.
For a bounded stretch the proxy damages a seeded fraction of every response (all six kinds, all
APIs, including aiokafka's own ApiVersions and Metadata); after every applied update every
partition series must carry exactly the truth the test created, or be absent. Then the proxy
behaves again and a complete, exact, error-free cycle must follow.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.faults.broker import FaultsBroker
from tests.faults.proxy import KINDS, FaultProxy
from tests.faults.support import (
    Truth,
    check_series,
    create_truth,
    fault_settings,
    missing_series,
    verify_truth,
)
from tests.integration.pipeline_support import Running, running, scrape
from tests.support.kafka import KafkaTestClient

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

FUZZ_SECONDS = 25.0
FETCH = 1
FAULTS_PER_KIND = 4
RATE = 0.25


async def test_malformed_responses_never_crash_never_lie_and_recovery_is_exact(
    faults_broker: FaultsBroker,
    fault_proxy: FaultProxy,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
) -> None:
    topics = [unique("fz"), unique("fz")]
    groups = [unique("gz"), unique("gz"), unique("gz")]
    state = await create_truth(truth, topics, groups)
    name = "fuzz"
    config = fault_settings(
        name,
        f"127.0.0.1:{faults_broker.proxy_port}",
        state,
        poll_interval=0.4,
        kafka_timeout=1.5,
        # Every cycle reads its timestamps again: Fetch answers get fuzzed too.
        cache_ttl=0.0,  # no cache
    )
    async with running(config) as run:
        began = time.time()
        first = await run.fresh_snapshot(name, within=60)
        series = scrape(run.exporter)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set(), first.error_count

        # Every API at once, then Fetch alone (time lag: aiokafka's Fetch decoding and the
        # record batch scan), which the first phase rarely reaches (earlier requests fail first).
        checks = await fuzz_phase(
            run, fault_proxy, state, name, began, rate=RATE, apis=None, enough=FAULTS_PER_KIND
        )
        applied = dict(fault_proxy.stats.faults)
        assert all(applied.get(k, 0) >= 1 for k in KINDS), applied
        fetch_before = fetch_faults(fault_proxy)
        checks += await fuzz_phase(
            run,
            fault_proxy,
            state,
            name,
            began,
            rate=0.8,
            apis=frozenset({FETCH}),
            enough=1,
            # One Fetch in flight per connection: nothing to swap or reorder it with.
            kinds=("garble", "truncate", "cut", "bad_length"),
        )
        assert fetch_faults(fault_proxy) - fetch_before >= 3, (
            dict(fault_proxy.stats.by_api),
            dict(fault_proxy.stats.responses_by_api),
        )

        fault_proxy.behave()
        recovered_from = time.time()

        snapshot = await run.recorder.wait_snapshot(
            name, lambda s: s.error_count == 0, after=recovered_from + 0.5, within=45
        )
        await run.wait_rendered(snapshot)
        series = scrape(run.exporter)
        assert check_series(series, state, name, oldest_observation=recovered_from) == []
        assert missing_series(series, state, name) == set()
        assert not run.task.done()
    await verify_truth(truth, state)
    print(f"fuzz: {checks} checks, faults by (kind, api) {dict(fault_proxy.stats.by_api)}")


def fetch_faults(proxy: FaultProxy) -> int:
    return sum(n for (_, api), n in proxy.stats.by_api.items() if api == "Fetch")


async def fuzz_phase(
    run: Running,
    proxy: FaultProxy,
    state: Truth,
    name: str,
    began: float,
    *,
    rate: float,
    apis: frozenset[int] | None,
    enough: int,
    kinds: tuple[str, ...] = KINDS,
) -> int:
    """Fuzz until every kind was applied ``enough`` times in this phase (or FUZZ_SECONDS);
    every 0.25 s the exporter must be running and every partition series exact or absent."""
    start = Counter(proxy.stats.faults)
    proxy.fuzz(rate, kinds=kinds, apis=apis)
    deadline = time.monotonic() + FUZZ_SECONDS
    checks = 0
    while time.monotonic() < deadline:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.25):
                await asyncio.shield(run.task)  # the exporter must not stop (or crash)
        problems = check_series(scrape(run.exporter), state, name, oldest_observation=began)
        assert problems == [], (problems, dict(proxy.stats.by_api))
        checks += 1
        done = Counter(proxy.stats.faults) - start
        if all(done[k] >= enough for k in kinds):
            break
    proxy.behave()
    return checks
