"""Deterministic malformed answers found by the fuzzer, each on the real broker through the
fault proxy, each with the exact values checked before and after."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.broker import FaultsBroker
from tests.faults.proxy import FaultProxy
from tests.faults.support import check_series, create_truth, fault_settings, missing_series
from tests.integration.pipeline_support import running, scrape
from tests.support.kafka import KafkaTestClient, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

LIST_OFFSETS = 2
FETCH = 1


async def test_inverted_api_versions_never_crash_and_the_client_is_replaced(
    faults_broker: FaultsBroker,
    fault_proxy: FaultProxy,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
) -> None:
    """The broker drops the connection right after the cycle's ListOffsets answers; for 2 s
    every new connection's ApiVersions answer (aiokafka's own version lookup) then has min > max.
    aiokafka asserts on that (AssertionError, not one of its errors): whichever caller opens the
    connection (the sampler's Fetch, our requests, aiokafka's metadata task, which dies of it)
    must fail for this cycle only; the broken client is replaced, values are exact again, and
    closing it at the end does not raise (on the original code it re-raised the assertion)."""
    state = await create_truth(truth, [unique("av")], [unique("gv")])
    name = "inverted"
    config = fault_settings(name, f"127.0.0.1:{faults_broker.proxy_port}", state)
    # The first cycle's two ListOffsets (earliest, latest): then the connection drops and every
    # new connection's version lookup is wrong for 2 s.
    fault_proxy.close_after(LIST_OFFSETS, 2, invert_versions_for=2.0)
    began = time.time()
    async with running(config) as run:

        def exact(snapshot: object) -> bool:
            return getattr(snapshot, "error_count", 1) == 0

        snapshot = await run.recorder.wait_snapshot(name, exact, within=30)
        await run.wait_rendered(snapshot)
        assert not run.task.done()
        series = scrape(run.exporter)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set()
    assert fault_proxy.stats.faults["close_after"] == 1
    assert fault_proxy.stats.faults["inverted_versions"] >= 1


LIST_GROUPS = 16


@pytest.mark.parametrize("api", [LIST_GROUPS, FETCH])
async def test_a_connection_that_stops_answering_is_dropped_within_the_cycle_deadline(
    faults_broker: FaultsBroker,
    fault_proxy: FaultProxy,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
    api: int,
) -> None:
    """One answer whose size prefix overstates its length: from then on the connection is
    silent (a half-open socket looks the same). With poll_interval shorter than kafka_timeout
    the cycle deadline, not the request timeout, abandons the waiting request; the connection
    must still be closed, or every later request queues behind the lost answer for good."""
    state = await create_truth(truth, [unique("st")], [unique("gs")])
    name = f"stall{api}"
    config = fault_settings(
        name,
        f"127.0.0.1:{faults_broker.proxy_port}",
        state,
        poll_interval=0.5,
        kafka_timeout=10.0,
        cache_ttl=0.0,  # no cache: every cycle Fetches
    )
    async with running(config) as run:
        began = time.time()
        await run.fresh_snapshot(name, within=30)
        fault_proxy.stall_next(api)

        async def stalled_once() -> bool:
            return fault_proxy.stats.faults["stall"] == 1

        await wait_until(stalled_once, within=10, interval=0.02, message="the stall")
        stalled = time.time()
        snapshot = await run.recorder.wait_snapshot(
            name, lambda s: s.error_count == 0, after=stalled + 0.1, within=15
        )
        await run.wait_rendered(snapshot)
        series = scrape(run.exporter)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set()


@pytest.mark.parametrize(("api", "at"), [(FETCH, 8), (LIST_GROUPS, 9)])
async def test_an_absurd_throttle_time_is_malformed_not_a_24_day_pause(
    faults_broker: FaultsBroker,
    fault_proxy: FaultProxy,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
    api: int,
    at: int,
) -> None:
    """One answer whose throttle_time_ms reads 2^31 - 1 (garbage that still decodes): honoured,
    it would hold every later request to that broker for 24 days (every cycle failing, or
    never a time lag again). It must count as a malformed answer for that one request."""
    state = await create_truth(truth, [unique("th")], [unique("gt")])
    name = f"throttle{api}"
    config = fault_settings(
        name, f"127.0.0.1:{faults_broker.proxy_port}", state, poll_interval=0.5, cache_ttl=0.0
    )
    async with running(config) as run:
        began = time.time()
        await run.fresh_snapshot(name, within=30)
        fault_proxy.throttle_next(api, 2**31 - 1, at)

        async def throttled() -> bool:
            return fault_proxy.stats.faults["throttle"] == 1

        await wait_until(throttled, within=10, interval=0.02, message="the throttle")
        after = time.time()
        snapshot = await run.recorder.wait_snapshot(
            name, lambda s: s.error_count == 0, after=after + 0.1, within=15
        )
        await run.wait_rendered(snapshot)
        series = scrape(run.exporter)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set()
