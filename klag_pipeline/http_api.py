"""The JSON API (``/api/v1/...``): clusters, their groups worst first, one group in detail.

Everything is built from the :class:`~klag_pipeline.sinks.snapshots.SnapshotStore` (the last
published snapshot and its health), never from Kafka at request time. Keys are stable snake_case;
docs/health.md ("API and status page") documents them. JSON has no infinity, so a catch-up time
that never ends is ``null`` with ``catch_up_never: true``; ``null`` alone means unknown. Without
health (``[exporter.health] enabled = false``) every status is ``null`` and the lag figures stay.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from klag_pipeline.health.model import ClusterHealth, GroupHealth, PartitionHealth, Status
from klag_pipeline.model import TopicPartition
from klag_pipeline.sinks.snapshots import ClusterEntry, SnapshotStore
from klag_pipeline.snapshot import GroupSummary, PartitionRow

SNAPSHOTS_KEY = web.AppKey("snapshots", SnapshotStore)

Json = dict[str, Any]
_NO_STORE = {"Cache-Control": "no-store"}


def severity(status_code: int | None, lag: int) -> tuple[int, int]:
    """Sort key, ascending = worst first: higher codes first, UNKNOWN (-1) and no status (health
    disabled) last, then the larger lag first."""
    rank = -1 if status_code is None else status_code
    return -rank, -lag


def _status(status: Status | None) -> Json:
    return {
        "status": None if status is None else status.name,
        "status_code": None if status is None else int(status),
    }


def _catch_up(seconds: float | None, key: str) -> Json:
    never = seconds is not None and math.isinf(seconds)
    return {key: None if never else seconds, "catch_up_never": never}


def group_json(summary: GroupSummary, health: ClusterHealth | None) -> Json:
    """One group's line in the list: lag, time lag, catch-up time, status."""
    group_health: GroupHealth | None = None if health is None else health.groups.get(summary.group)
    out: Json = {
        "group": summary.group,
        "state": summary.state.name,
        **_status(None if group_health is None else group_health.status),
        "reason": None if group_health is None else group_health.reason,
        "member_count": summary.member_count,
        "max_lag": summary.max_lag,
        "sum_lag": summary.sum_lag,
        "max_lag_seconds": summary.max_lag_seconds,
        **_catch_up(
            None if group_health is None else group_health.max_catch_up_seconds,
            "max_catch_up_seconds",
        ),
        "commit_age_seconds": None if group_health is None else group_health.commit_age_seconds,
        "consume_rate": None if group_health is None else group_health.consume_rate,
        "lag_velocity": None if group_health is None else group_health.lag_velocity,
        "rebalances": None if group_health is None else group_health.rebalances,
        "last_rebalance_at": None if group_health is None else group_health.last_rebalance_at,
    }
    return out


def groups_json(entry: ClusterEntry) -> list[Json]:
    """Every group of the cluster, worst first (ties by name, so the order is stable). Built
    once per snapshot: the API and the page reuse it until the next cycle."""
    cached = entry.views.get("groups")
    if cached is None:
        health = entry.snapshot.health
        views = [group_json(s, health) for s in entry.snapshot.groups]
        views.sort(key=lambda v: (*severity(v["status_code"], v["max_lag"]), v["group"]))
        cached = entry.views["groups"] = views
    return cached  # type: ignore[return-value]  # only this function writes the key


def cluster_json(entry: ClusterEntry) -> Json:
    snapshot = entry.snapshot
    statuses: dict[str, int] = {}
    if snapshot.health is not None:
        for group in snapshot.health.groups.values():
            statuses[group.status.name] = statuses.get(group.status.name, 0) + 1
    return {
        "cluster": snapshot.cluster,
        "labels": dict(snapshot.labels),
        "cycle": snapshot.cycle,
        "observed_at": snapshot.observed_at,
        "duration_seconds": snapshot.duration_seconds,
        "timestamp_sampling": snapshot.timestamp_sampling,
        "health_enabled": snapshot.health is not None,
        "window_seconds": None if snapshot.health is None else snapshot.health.window_seconds,
        "group_count": len(snapshot.groups),
        "partition_count": len(snapshot.rows),
        "status_counts": statuses,
    }


def _partition_json(row: PartitionRow, health: ClusterHealth | None) -> Json:
    tp = row.topic_partition
    ph: PartitionHealth | None = None if health is None else health.partitions.get((row.group, tp))
    return {
        "topic": row.topic,
        "partition": row.partition,
        **_status(None if ph is None else ph.status),
        "reason": None if ph is None else ph.reason,
        "committed": row.committed,
        "low": row.low,
        "high": row.high,
        "lag": row.lag,
        "lag_seconds": row.lag_seconds,
        "estimated_lag_seconds": None if ph is None else ph.estimated_lag_seconds,
        **_catch_up(None if ph is None else ph.catch_up_seconds, "catch_up_seconds"),
        "commit_age_seconds": None if ph is None else ph.commit_age_seconds,
        "consume_rate": None if ph is None else ph.rates.consume,
        "produce_rate": None if ph is None else ph.rates.produce,
        "lag_velocity": None if ph is None else ph.rates.lag_velocity,
        "consumer_id": row.consumer_id,
        "client_id": row.client_id,
        "member_host": row.member_host,
        "carried": row.carried,
    }


def _members(rows: Iterable[PartitionRow]) -> list[Json]:
    """Members owning partitions, from the rows' assignment (members without any are counted in
    ``member_count`` but cannot be listed: the snapshot keeps assignments, not member lists)."""
    owned: dict[tuple[str, str, str], list[TopicPartition]] = {}
    for row in rows:
        if row.consumer_id:
            member = (row.consumer_id, row.client_id, row.member_host)
            owned.setdefault(member, []).append(row.topic_partition)
    return [
        {
            "consumer_id": consumer_id,
            "client_id": client_id,
            "member_host": host,
            "partitions": [{"topic": tp.topic, "partition": tp.partition} for tp in sorted(tps)],
        }
        for (consumer_id, client_id, host), tps in sorted(owned.items())
    ]


def group_detail_json(entry: ClusterEntry, summary: GroupSummary) -> Json:
    health = entry.snapshot.health
    rows = entry.rows_by_group.get(summary.group, ())
    partitions = [_partition_json(row, health) for row in rows]
    partitions.sort(
        key=lambda p: (*severity(p["status_code"], p["lag"]), p["topic"], p["partition"])
    )
    topics = []
    for topic in sorted(summary.topic_sum_lag):
        th = None if health is None else health.topics.get((summary.group, topic))
        topics.append(
            {
                "topic": topic,
                "sum_lag": summary.topic_sum_lag[topic],
                "consume_rate": None if th is None else th.consume_rate,
                "lag_velocity": None if th is None else th.lag_velocity,
                "commit_age_seconds": None if th is None else th.commit_age_seconds,
                "abandoned": None if th is None else th.abandoned,
            }
        )
    return {
        "cluster": entry.snapshot.cluster,
        "observed_at": entry.snapshot.observed_at,
        **group_json(summary, health),
        "topics": topics,
        "partitions": partitions,
        "members": _members(rows),
    }


# -- handlers -------------------------------------------------------------------------------------


def _json(body: Json, status: int = 200) -> web.Response:
    # allow_nan=False: a stray NaN or infinity must fail loudly here, not yield invalid JSON.
    return web.json_response(body, status=status, headers=_NO_STORE, dumps=_dumps)


def _dumps(body: object) -> str:
    return json.dumps(body, allow_nan=False)


def _not_found(message: str) -> web.Response:
    return _json({"error": message}, status=404)


def _entry(request: web.Request) -> ClusterEntry | web.Response:
    cluster = request.match_info["cluster"]
    entry = request.app[SNAPSHOTS_KEY].get(cluster)
    if entry is None:
        return _not_found(f"no data for cluster {cluster!r}")
    return entry


async def _clusters(request: web.Request) -> web.Response:
    store = request.app[SNAPSHOTS_KEY]
    return _json({"clusters": [cluster_json(entry) for entry in store.entries()]})


async def _groups(request: web.Request) -> web.Response:
    entry = _entry(request)
    if isinstance(entry, web.Response):
        return entry
    return _json(
        {
            "cluster": entry.snapshot.cluster,
            "observed_at": entry.snapshot.observed_at,
            "groups": groups_json(entry),
        }
    )


async def _group(request: web.Request) -> web.Response:
    entry = _entry(request)
    if isinstance(entry, web.Response):
        return entry
    name = request.match_info["group"]
    summary = next((g for g in entry.snapshot.groups if g.group == name), None)
    if summary is None:
        return _not_found(f"no group {name!r} in cluster {entry.snapshot.cluster!r}")
    return _json(group_detail_json(entry, summary))


def add_api_routes(app: web.Application, store: SnapshotStore) -> None:
    app[SNAPSHOTS_KEY] = store
    app.router.add_get("/api/v1/clusters", _clusters)
    app.router.add_get("/api/v1/clusters/{cluster}/groups", _groups)
    # ``.+``: a group id may contain "/" (Kafka allows it); the client percent-encodes it.
    app.router.add_get("/api/v1/clusters/{cluster}/groups/{group:.+}", _group)
