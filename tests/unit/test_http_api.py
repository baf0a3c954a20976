"""The JSON API and the ``/`` page, served from hand-built snapshots with health by a real aiohttp
server; expected values are written out here, not taken from the code under test."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest

from klag_pipeline.health.model import (
    NO_RATES,
    ClusterHealth,
    GroupHealth,
    GroupTopicHealth,
    PartitionHealth,
    Rates,
    Status,
)
from klag_pipeline.http import HttpServer, build_app, start_server
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.sinks.prometheus import PrometheusSink
from klag_pipeline.sinks.snapshots import SnapshotStore
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, GroupSummary, PartitionRow
from klag_pipeline.status import StatusBoard
from klag_pipeline.status_page import format_duration
from klag_pipeline.telemetry.self_metrics import SelfMetrics

EVIL = "<script>alert(1)</script>"
SLASHED = "team/a b"


@dataclass(frozen=True)
class G:
    """One group of the scenario: one partition of topic ``t``."""

    name: str
    lag: int
    status: Status
    reason: str
    catch_up: float | None
    commit_age: float
    members: int
    time_lag: float | None = None


GROUPS = (
    G("paid", 0, Status.OK, "caught up", 0.0, 4000.0, 1),
    G(
        "billing",
        120,
        Status.STOPPED,
        "no members; lag grew from 0 to 120",
        math.inf,
        200.0,
        0,
        75.0,
    ),
    G(EVIL, 50, Status.LAGGING, "lag grew", 200.0, 3.0, 1, 12.5),
    G("fresh", 500, Status.UNKNOWN, "not enough history", None, 0.0, 1),
    G(SLASHED, 10, Status.STALLED, "committed offset not moving", math.inf, 7300.0, 2),
)


def _row(g: G) -> PartitionRow:
    member = ("consumer-1", "client-1", "/10.0.0.1") if g.members else ("", "", "")
    return PartitionRow(
        group=g.name,
        topic="t",
        partition=0,
        member_host=member[2],
        consumer_id=member[0],
        client_id=member[1],
        committed=1000 - g.lag,
        low=0,
        high=1000,
        lag=g.lag,
        lag_seconds=g.time_lag,
        compaction_detected=False,
        data_loss_detected=False,
        messages_lost=0,
        retention_margin=1000 - g.lag,
        lag_retention_ratio=g.lag / 1000,
    )


def scenario(*, health: bool = True, cluster: str = "prod") -> ClusterSnapshot:
    tp = TopicPartition("t", 0)
    summaries = tuple(
        GroupSummary(
            g.name,
            GroupState.STABLE if g.members else GroupState.EMPTY,
            "consumer",
            "classic",
            g.members,
            g.lag,
            g.time_lag,
            g.lag,
            {"t": g.lag},
        )
        for g in GROUPS
    )
    cluster_health = ClusterHealth(
        window_seconds=300.0,
        partitions={
            (g.name, tp): PartitionHealth(
                Rates(2.0, 1.5, -0.5) if g.status is Status.LAGGING else NO_RATES,
                g.catch_up,
                g.commit_age,
                g.status,
                g.reason,
            )
            for g in GROUPS
        },
        topics={(g.name, "t"): GroupTopicHealth(None, None, g.commit_age, False) for g in GROUPS},
        groups={
            g.name: GroupHealth(g.status, g.reason, None, None, g.catch_up, 0, None, g.commit_age)
            for g in GROUPS
        },
        produce_rates={tp: 1.5},
    )
    return ClusterSnapshot(
        cluster=cluster,
        labels={"env": "test"},
        cycle=7,
        observed_at=1_700_000_000.0,
        started_at=1_700_000_000.0,
        duration_seconds=0.2,
        poll_time_ms=20.0,
        timestamp_sampling=True,
        partitions=(),
        groups=summaries,
        rows=tuple(_row(g) for g in GROUPS),
        compaction_detected_count=0,
        data_loss_partition_count=0,
        error_count=0,
        health=cluster_health if health else None,
    )


@dataclass
class Served:
    store: SnapshotStore
    server: HttpServer
    session: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, Mapping[str, str], str]:
        url = f"http://127.0.0.1:{self.server.port}{path}"
        async with self.session.get(url) as response:
            return response.status, response.headers, await response.text()

    async def json(self, path: str, expect: int = 200) -> Any:
        status, headers, body = await self.get(path)
        assert status == expect, body
        assert headers["Content-Type"].startswith("application/json")
        assert headers["Cache-Control"] == "no-store"
        return json.loads(body, parse_constant=_no_constant)


def _no_constant(name: str) -> None:
    raise AssertionError(f"invalid JSON constant {name}")


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = FakeClock()
    status = StatusBoard(["prod"], staleness_threshold=90.0, poll_interval=30.0, clock=clock)
    store = SnapshotStore()
    app = build_app(
        PrometheusSink("partition", status, SelfMetrics()),
        status,
        version="9.9.9",
        settings_view={},
        snapshots=store,
    )
    server = await start_server(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Served(store, server, session)
    finally:
        await server.cleanup()


WORST_FIRST = ["billing", SLASHED, EVIL, "paid", "fresh"]


async def test_clusters_and_withdrawal(served: Served) -> None:
    assert await served.json("/api/v1/clusters") == {"clusters": []}
    served.store.apply(scenario())
    served.store.apply(scenario(cluster="dr", health=False))
    body = await served.json("/api/v1/clusters")
    assert [c["cluster"] for c in body["clusters"]] == ["dr", "prod"]
    prod = body["clusters"][1]
    assert prod["labels"] == {"env": "test"}
    assert prod["cycle"] == 7
    assert prod["health_enabled"] is True
    assert prod["window_seconds"] == 300.0
    assert prod["group_count"] == 5
    assert prod["status_counts"] == {
        "OK": 1,
        "STOPPED": 1,
        "LAGGING": 1,
        "UNKNOWN": 1,
        "STALLED": 1,
    }
    assert body["clusters"][0]["health_enabled"] is False
    assert body["clusters"][0]["status_counts"] == {}

    served.store.apply(ClusterWithdrawn("prod", "stale"))
    body = await served.json("/api/v1/clusters")
    assert [c["cluster"] for c in body["clusters"]] == ["dr"]
    error = await served.json("/api/v1/clusters/prod/groups", expect=404)
    assert error == {"error": "no data for cluster 'prod'"}


async def test_groups_worst_first_with_status_lag_and_catch_up(served: Served) -> None:
    served.store.apply(scenario())
    body = await served.json("/api/v1/clusters/prod/groups")
    assert body["cluster"] == "prod"
    groups = body["groups"]
    # STOPPED, STALLED, LAGGING, OK, then UNKNOWN last although its lag is the largest.
    assert [g["group"] for g in groups] == WORST_FIRST
    billing = groups[0]
    assert billing == {
        "group": "billing",
        "state": "EMPTY",
        "status": "STOPPED",
        "status_code": 4,
        "reason": "no members; lag grew from 0 to 120",
        "member_count": 0,
        "max_lag": 120,
        "sum_lag": 120,
        "max_lag_seconds": 75.0,
        "max_catch_up_seconds": None,
        "catch_up_never": True,
        "commit_age_seconds": 200.0,
        "consume_rate": None,
        "lag_velocity": None,
        "rebalances": 0,
        "last_rebalance_at": None,
    }
    paid = groups[3]
    assert (paid["status_code"], paid["max_catch_up_seconds"], paid["catch_up_never"]) == (
        0,
        0.0,
        False,
    )
    fresh = groups[4]
    assert (fresh["status"], fresh["max_catch_up_seconds"], fresh["catch_up_never"]) == (
        "UNKNOWN",
        None,
        False,
    )


async def test_without_health_statuses_are_null_and_lag_orders(served: Served) -> None:
    served.store.apply(scenario(health=False))
    groups = (await served.json("/api/v1/clusters/prod/groups"))["groups"]
    assert [g["group"] for g in groups] == ["fresh", "billing", EVIL, SLASHED, "paid"]
    assert {g["status"] for g in groups} == {None}
    assert {g["status_code"] for g in groups} == {None}
    assert groups[0]["max_lag"] == 500
    assert groups[1]["max_lag_seconds"] == 75.0


async def test_group_detail_partitions_members_and_encoded_names(served: Served) -> None:
    served.store.apply(scenario())
    detail = await served.json("/api/v1/clusters/prod/groups/team%2Fa%20b")
    assert detail["group"] == SLASHED
    assert detail["status"] == "STALLED"
    assert detail["member_count"] == 2
    assert detail["members"] == [
        {
            "consumer_id": "consumer-1",
            "client_id": "client-1",
            "member_host": "/10.0.0.1",
            "partitions": [{"topic": "t", "partition": 0}],
        }
    ]
    [partition] = detail["partitions"]
    assert partition["reason"] == "committed offset not moving"
    assert partition["commit_age_seconds"] == 7300.0
    assert (partition["catch_up_seconds"], partition["catch_up_never"]) == (None, True)
    assert (partition["committed"], partition["high"], partition["lag"]) == (990, 1000, 10)
    assert detail["topics"] == [
        {
            "topic": "t",
            "sum_lag": 10,
            "consume_rate": None,
            "lag_velocity": None,
            "commit_age_seconds": 7300.0,
            "abandoned": False,
        }
    ]

    lagging = await served.json("/api/v1/clusters/prod/groups/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    rates = {
        k: lagging["partitions"][0][k] for k in ("consume_rate", "produce_rate", "lag_velocity")
    }
    assert rates == {"consume_rate": 2.0, "produce_rate": 1.5, "lag_velocity": -0.5}

    stopped = await served.json("/api/v1/clusters/prod/groups/billing")
    assert stopped["members"] == []

    error = await served.json("/api/v1/clusters/prod/groups/nope", expect=404)
    assert error == {"error": "no group 'nope' in cluster 'prod'"}
    error = await served.json("/api/v1/clusters/nope/groups/billing", expect=404)
    assert error == {"error": "no data for cluster 'nope'"}


def _page_groups(page: str) -> list[tuple[str, str]]:
    """(group as displayed, status text) of each group row, in page order."""
    rows = re.findall(
        r'<tr class="group"><td><a [^>]*>(.*?)</a></td><td><span[^>]*>(.*?)</span>', page
    )
    return [(name, status) for name, status in rows]


async def test_page_lists_groups_worst_first_with_readable_durations(served: Served) -> None:
    status, headers, page = await served.get("/")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert "No published data" in page
    assert 'http-equiv="refresh"' not in page

    served.store.apply(scenario())
    _, _, page = await served.get("/")
    assert _page_groups(page) == [
        ("billing", "STOPPED"),
        ("team/a b", "STALLED"),
        ("&lt;script&gt;alert(1)&lt;/script&gt;", "LAGGING"),
        ("paid", "OK"),
        ("fresh", "UNKNOWN"),
    ]
    assert EVIL not in page  # rendered as text, never as markup
    assert 'href="/api/v1/clusters/prod/groups/team%2Fa%20b"' in page
    billing = page[page.index(">billing<") :].split("</tr>")[0]
    # time lag 75 s, catch-up never, commit age 200 s
    assert '<td class="n">1m15s</td><td class="n">never</td><td class="n">3m20s</td>' in billing
    paid = page[page.index(">paid<") :].split("</tr>")[0]
    assert '<td class="n">—</td><td class="n">caught up</td><td class="n">1h06m</td>' in paid
    assert "<script" not in page.lower().replace("&lt;script", "")


async def test_page_without_health_and_refresh(served: Served) -> None:
    served.store.apply(scenario(health=False))
    _, _, page = await served.get("/?refresh=2")
    assert '<meta http-equiv="refresh" content="5">' in page  # clamped to the minimum
    assert "health disabled" in page
    assert [status for _, status in _page_groups(page)] == ["—"] * 5
    _, _, page = await served.get("/?refresh=abc")
    assert 'http-equiv="refresh"' not in page


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (math.inf, "never"),
        (0.0, "0s"),
        (4.25, "4s"),
        (59.6, "1m00s"),
        (200.0, "3m20s"),
        (3600.0, "1h00m"),
        (7512.0, "2h05m"),
        (90061.0, "1d01h"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_store_keeps_the_latest_snapshot_per_cluster() -> None:
    store = SnapshotStore()
    first = scenario()
    store.apply(first)
    second = replace(first, cycle=8)
    store.apply(second)
    entry = store.get("prod")
    assert entry is not None
    assert entry.snapshot.cycle == 8
    assert [r.group for r in entry.rows_by_group["billing"]] == ["billing"]
    store.apply(ClusterWithdrawn("prod", "standby"))
    store.apply(ClusterWithdrawn("prod", "standby"))  # twice is harmless
    assert store.get("prod") is None
    assert store.entries() == []


async def test_topics_carry_their_own_commit_age_and_abandoned_flag(served: Served) -> None:
    snapshot = scenario()
    assert snapshot.health is not None
    topics = {**snapshot.health.topics, ("paid", "u"): GroupTopicHealth(None, None, 10.0, True)}
    paid = replace(snapshot.groups[0], topic_sum_lag={"t": 0, "u": 0})
    served.store.apply(
        replace(
            snapshot,
            groups=(paid, *snapshot.groups[1:]),
            health=replace(snapshot.health, topics=topics),
        )
    )
    detail = await served.json("/api/v1/clusters/prod/groups/paid")
    assert [(t["topic"], t["commit_age_seconds"], t["abandoned"]) for t in detail["topics"]] == [
        ("t", 4000.0, False),
        ("u", 10.0, True),
    ]


async def test_a_new_cycle_replaces_what_earlier_requests_rendered(served: Served) -> None:
    # The group list and the page section are built once per snapshot and reused: the next
    # snapshot of the cluster must show, not the rendering kept from the one before.
    first = scenario()
    served.store.apply(first)
    before = (await served.json("/api/v1/clusters/prod/groups"))["groups"]
    page_before = (await served.get("/"))[2]
    assert before == (await served.json("/api/v1/clusters/prod/groups"))["groups"]
    served.store.apply(replace(first, health=None, cycle=8))
    after = (await served.json("/api/v1/clusters/prod/groups"))["groups"]
    assert {g["status"] for g in before} != {None}
    assert {g["status"] for g in after} == {None}
    assert (await served.get("/"))[2] != page_before
