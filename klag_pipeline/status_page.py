"""The ``/`` status page: the exporter, its clusters, then each cluster's groups worst first.

Server-rendered HTML with inline CSS and no script or external asset, so it works offline and
behind any proxy. Every value from Kafka or the settings passes through :func:`html.escape`. The
group lines are the JSON API's (:mod:`klag_pipeline.http_api`), so the page and the API never
disagree. No auto-refresh unless asked: ``/?refresh=30`` adds a meta refresh (5 s to 1 h), so a
page left open does not reload while someone reads or selects from it.
"""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote

from klag_pipeline.http_api import groups_json
from klag_pipeline.output import format_catch_up
from klag_pipeline.sinks.snapshots import ClusterEntry, SnapshotStore
from klag_pipeline.status import ClusterStatus, StatusBoard

REFRESH_CHOICES = (10, 30, 60)
MIN_REFRESH_SECONDS = 5
MAX_REFRESH_SECONDS = 3600

_STYLE = """body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left}
th{border-bottom:1px solid #999}td.n{text-align:right}pre{background:#f4f4f4;padding:1em}
.st{font-weight:bold;padding:.1em .5em;border-radius:.3em;color:#fff}
.st-OK{background:#2e7d32}.st-LAGGING{background:#b58900}.st-REWOUND{background:#6a1b9a}
.st-STALLED{background:#e65100}.st-STOPPED{background:#c62828}.st-UNKNOWN,.st-none{background:#777}"""


def format_duration(seconds: float | None) -> str:
    """The table's durations (``12m05s``, ``never``), with ``—`` when unknown."""
    return format_catch_up(seconds, unknown="—")


def _catch_up(view: dict[str, Any]) -> str:
    if view["catch_up_never"]:
        return "never"
    seconds = view["max_catch_up_seconds"]
    return "caught up" if seconds == 0 else format_duration(seconds)


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s ago"


def _when(unix: float | None) -> str:
    return "-" if unix is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _cells(cells: list[str], numeric: frozenset[int] = frozenset()) -> str:
    """Table cells, escaped here: the one place row values enter the page."""
    return "".join(
        f'<td class="n">{html.escape(c)}</td>' if i in numeric else f"<td>{html.escape(c)}</td>"
        for i, c in enumerate(cells)
    )


def _cluster_row(cluster: ClusterStatus) -> str:
    duration = "-" if cluster.last_duration is None else f"{cluster.last_duration:.3f}s"
    cells = _cells(
        [
            cluster.name,
            cluster.state,
            _when(cluster.last_success_at),
            _age(cluster.age_seconds),
            duration,
            str(cluster.cycles),
            str(cluster.consecutive_failures),
            cluster.dead_error or cluster.last_error or "",
        ]
    )
    return f"<tr>{cells}</tr>"


def _group_row(cluster: str, view: dict[str, Any]) -> str:
    name = view["status"] or "none"
    label = view["status"] or "—"
    link = f"/api/v1/clusters/{quote(cluster, safe='')}/groups/{quote(view['group'], safe='')}"
    cells = _cells(
        [
            view["state"],
            f"{view['max_lag']:,}",
            f"{view['sum_lag']:,}",
            format_duration(view["max_lag_seconds"]),
            _catch_up(view),
            format_duration(view["commit_age_seconds"]),
            str(view["member_count"]),
            view["reason"] or "",
        ],
        numeric=frozenset({1, 2, 3, 4, 5, 6}),
    )
    # The status class comes from the Status enum's names only, never from Kafka data.
    return (
        f'<tr class="group"><td><a href="{html.escape(link)}">{html.escape(view["group"])}</a></td>'
        f'<td><span class="st st-{name}">{html.escape(label)}</span></td>{cells}</tr>'
    )


def _groups_section(entry: ClusterEntry) -> str:
    """Rendered once per snapshot (thousands of rows): later page views reuse it."""
    cached = entry.views.get("page_section")
    if cached is None:
        cached = entry.views["page_section"] = _render_groups_section(entry)
    return cached  # type: ignore[return-value]  # only this function writes the key


def _render_groups_section(entry: ClusterEntry) -> str:
    snapshot = entry.snapshot
    health = snapshot.health
    window = (
        "health disabled" if health is None else f"window {format_duration(health.window_seconds)}"
    )
    rows = "\n".join(_group_row(snapshot.cluster, view) for view in groups_json(entry))
    return f"""<h3>{html.escape(snapshot.cluster)}</h3>
<p>cycle {snapshot.cycle}, observed {_when(snapshot.observed_at)} · {html.escape(window)} ·
{len(snapshot.groups)} groups</p>
<table class="groups" data-cluster="{html.escape(snapshot.cluster)}">
<tr><th>group</th><th>status</th><th>state</th><th>max lag</th><th>total lag</th>
<th>time lag</th><th>catch-up time</th><th>commit age</th><th>members</th><th>reason</th></tr>
{rows}
</table>"""


def refresh_seconds(query: str | None) -> int | None:
    """The ``refresh`` query parameter, clamped; None when absent or not a number."""
    if query is None or not query.isdigit():
        return None
    return max(MIN_REFRESH_SECONDS, min(MAX_REFRESH_SECONDS, int(query)))


def render_page(
    status: StatusBoard,
    store: SnapshotStore,
    *,
    version: str,
    settings_view: str,
    refresh: int | None,
) -> str:
    version = html.escape(version)
    healthy, health_reason = status.healthy()
    ready, ready_reason = status.ready()
    role = "leader" if status.is_leader else "standby"
    clusters = "\n".join(_cluster_row(cluster) for cluster in status.snapshot())
    groups = "\n".join(_groups_section(entry) for entry in store.entries())
    if not groups:
        groups = "<p>No published data (no cycle yet, stale, or standby).</p>"
    meta = "" if refresh is None else f'<meta http-equiv="refresh" content="{refresh}">'
    choices = " · ".join(f'<a href="/?refresh={s}">{s}s</a>' for s in REFRESH_CHOICES)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8">{meta}<title>klag-pipeline {version}</title>
<style>{_STYLE}</style></head>
<body>
<h1>klag-pipeline {version}</h1>
<p>Kafka consumer-group lag exporter.
<a href="/metrics">/metrics</a> · <a href="/health">/health</a> ·
<a href="/ready">/ready</a> · <a href="/leader">/leader</a> ·
<a href="/api/v1/clusters">/api/v1/clusters</a></p>
<p>Role: {html.escape(role)} ({html.escape(status.identity or "-")}) ·
health: {html.escape(health_reason if not healthy else "ok")} ·
ready: {html.escape(ready_reason if not ready else "ok")} ·
up: {1 if status.up() else 0} ·
auto-refresh: {"off" if refresh is None else f"{refresh}s"} (<a href="/">off</a> · {choices})</p>
<h2>Clusters</h2>
<table>
<tr><th>cluster</th><th>state</th><th>last success (UTC)</th><th>age</th>
<th>last cycle duration</th><th>cycles</th><th>consecutive failures</th><th>last error</th></tr>
{clusters}
</table>
<h2>Groups (worst first)</h2>
{groups}
<h2>Settings (secrets redacted)</h2>
<pre>{html.escape(settings_view)}</pre>
</body>
</html>
"""
