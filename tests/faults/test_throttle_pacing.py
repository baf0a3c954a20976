"""A client quota whose pauses add up to more than ``poll_interval`` in one cycle.

Every answer to ListGroups, DescribeGroups and OffsetFetch asks for 1.1 s of throttle (written
into the real broker's answers by the fault proxy, as a quota on a loaded broker does): the
cycle's next request to that broker must wait, so a cycle spends 3.3 s waiting while
``poll_interval`` is 2.5 s. Counted against the deadline, that failed every cycle and the
exporter reported nothing while throttled (the CI failure of test_throttling.py on a loaded
machine). Throttle waits now move the cycle's deadline back by up to one more poll interval
(klag_pipeline.pacing): cycles finish, longer than ``poll_interval``, with exact values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.broker import FaultsBroker
from tests.faults.proxy import FaultProxy
from tests.faults.support import check_series, create_truth, fault_settings, missing_series
from tests.integration.pipeline_support import running, scrape, self_metric
from tests.support.kafka import KafkaTestClient, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

OFFSET_FETCH, DESCRIBE_GROUPS, LIST_GROUPS = 9, 15, 16
THROTTLED_APIS = {
    LIST_GROUPS: "ListGroups",
    DESCRIBE_GROUPS: "DescribeGroups",
    OFFSET_FETCH: "OffsetFetch",
}
THROTTLE_MS = 1100
POLL_INTERVAL = 2.5
FLEXIBLE_HEADER_THROTTLE_AT = 9  # size, correlation id, no tagged fields: then throttle_time_ms


async def test_a_quota_longer_than_the_poll_interval_slows_cycles_instead_of_failing_them(
    faults_broker: FaultsBroker,
    fault_proxy: FaultProxy,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
) -> None:
    state = await create_truth(truth, [unique("qt")], [unique("gq")])
    name = "quota"
    config = fault_settings(
        name,
        f"127.0.0.1:{faults_broker.proxy_port}",
        state,
        poll_interval=POLL_INTERVAL,
        kafka_timeout=4.0,
    )
    async with running(config) as run:
        began = time.time()
        await run.fresh_snapshot(name, within=30)
        for api in THROTTLED_APIS:
            fault_proxy.throttle_every(api, THROTTLE_MS, FLEXIBLE_HEADER_THROTTLE_AT)

        async def throttling() -> bool:
            return fault_proxy.stats.faults["throttle"] >= len(THROTTLED_APIS)

        await wait_until(throttling, within=15, interval=0.05, message="throttled answers")
        throttled_at = time.time()

        def finished() -> list[float]:
            """Durations of the error-free cycles that started once every answer throttled."""
            return [
                s.observed_at - s.started_at
                for s in run.recorder.snapshots(name)
                if s.started_at >= throttled_at and s.error_count == 0
            ]

        await run.recorder.wait_for(
            lambda: len(finished()) >= 3, within=40, what="3 error-free throttled cycles"
        )
        # They waited out the throttles: each took longer than the poll interval.
        assert min(finished()) > POLL_INTERVAL, finished()
        snapshot = run.recorder.snapshots(name)[-1]
        await run.wait_rendered(snapshot)
        series = scrape(run.exporter)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set()
        # The throttles were read off the answers (at the right place) and reported.
        counted = self_metric(run.exporter, "klag_pipeline_kafka_throttled_responses_total")
        reported = {dict(k)["api"] for k, v in counted.items() if v > 0}
        assert set(THROTTLED_APIS.values()) <= reported, reported
        fault_proxy.behave()
