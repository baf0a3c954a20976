"""``klag-pipeline status GROUP``: one group's evaluation after a ``--window`` run.

Runs exactly like ``once --window`` (:mod:`klag_pipeline.commands.window`) on the clusters whose
filters keep the group, narrowed to that one group (no other group is described or fetched), then
prints the group's status, reason, rates, catch-up time, rebalances and one line per partition.

Exit codes (cli.py lists them all): 0 the group is OK; 10 + the status code otherwise (9
UNKNOWN, 11 LAGGING, 12 REWOUND, 13 STALLED, 14 STOPPED), the worst over the clusters that have
the group; 3 no such group (or ``--cluster`` names no configured cluster); 1 a cluster failed
(whatever the others said: the answer is incomplete); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
from collections.abc import Sequence
from typing import Final, TextIO

from klag_pipeline.commands import DEFAULT_TIMEOUT, EXIT_INTERRUPTED
from klag_pipeline.commands.once import interruptible, log_failures
from klag_pipeline.health.model import GroupHealth, Status
from klag_pipeline.health.rules import worst
from klag_pipeline.output import format_catch_up, format_rate
from klag_pipeline.settings.durations import format_duration
from klag_pipeline.settings.schema import ClusterSettings, Settings
from klag_pipeline.snapshot import ClusterSnapshot

DEFAULT_WINDOW: Final = 30.0
EXIT_NOT_FOUND: Final = 3
# 10 + Status: UNKNOWN (-1) → 9 ... STOPPED (4) → 14; clear of 1, 2, 3 and 130.
EXIT_STATUS_BASE: Final = 10


def exit_code(status: Status) -> int:
    return 0 if status is Status.OK else EXIT_STATUS_BASE + int(status)


def status(
    settings: Settings,
    group: str,
    cluster: str | None = None,
    window: float = DEFAULT_WINDOW,
    time_limit: float = DEFAULT_TIMEOUT,
    *,
    out: TextIO | None = None,
) -> int:
    """Evaluate ``group`` over ``window``, print it, return the exit code (module docstring)."""
    stream = out or sys.stdout
    chosen = [c for c in settings.clusters if cluster is None or c.name == cluster]
    if not chosen:
        names = ", ".join(c.name for c in settings.clusters)
        return _not_found(f"no cluster named {cluster!r} in the settings (clusters: {names})")
    keeping = [c for c in chosen if c.keeps_group(group)]
    if not keeping:
        return _not_found(
            f"group {group!r} is left out by the group_whitelist / group_blacklist of "
            + ", ".join(c.name for c in chosen)
        )
    narrowed = dataclasses.replace(settings, clusters=tuple(_only(c, group) for c in keeping))
    snapshots, failures, interrupted = asyncio.run(
        interruptible(narrowed, time_limit, window=window, command="status")
    )
    found = [s for s in snapshots if any(g.group == group for g in s.groups)]
    for snapshot in found:
        stream.write(render_group(snapshot, group))
    stream.flush()
    log_failures(failures)
    if interrupted:
        return EXIT_INTERRUPTED
    if failures:
        return 1
    if not found:
        return _not_found(f"group {group!r} not found in {', '.join(s.cluster for s in snapshots)}")
    statuses = [
        s.health.groups[group].status for s in found if s.health and group in s.health.groups
    ]
    return exit_code(worst(statuses))


def _only(cluster: ClusterSettings, group: str) -> ClusterSettings:
    # Already known to be kept by the cluster's own filters: narrowing to it keeps the run cheap.
    return dataclasses.replace(
        cluster, group_whitelist=(re.compile(f"^{re.escape(group)}\\Z"),), group_blacklist=()
    )


def _not_found(message: str) -> int:
    print(message, file=sys.stderr)
    sys.stderr.flush()
    return EXIT_NOT_FOUND


def render_group(snapshot: ClusterSnapshot, group: str) -> str:
    """The evaluation of ``group`` in ``snapshot`` for humans."""
    (summary,) = [g for g in snapshot.groups if g.group == group]
    health = snapshot.health
    found: GroupHealth | None = health.groups.get(group) if health is not None else None
    members = f"{summary.member_count} member{'' if summary.member_count == 1 else 's'}"
    lines = [f"cluster {snapshot.cluster}, group {group}"]
    if found is None:
        lines.append("  status        UNKNOWN (not evaluated)")
    else:
        lines += [
            f"  status        {found.status.name} ({int(found.status)})",
            f"  reason        {found.reason}",
        ]
    lines.append(f"  state         {summary.state.name}, {members}")
    lines.append(f"  lag           {summary.sum_lag} (max per partition {summary.max_lag})")
    if summary.max_lag_seconds is not None:
        lines.append(f"  time lag      {summary.max_lag_seconds:.1f}s (age of the next record)")
    if found is not None and health is not None:
        velocity = "-" if found.lag_velocity is None else f"{found.lag_velocity:+.1f}/s"
        last = "-" if found.last_rebalance_at is None else _ago(snapshot, found.last_rebalance_at)
        lines += [
            f"  consume rate  {format_rate(found.consume_rate)}/s",
            f"  lag velocity  {velocity} (positive: falling behind)",
            f"  catch-up      {format_catch_up(found.max_catch_up_seconds)}"
            " (time until no lag at current rates)",
            f"  rebalances    {found.rebalances} (last: {last})",
            f"  window        {format_duration(round(health.window_seconds))}",
        ]
    lines.append("")
    lines += _partition_lines(snapshot, group)
    return "\n".join(lines) + "\n\n"


def _ago(snapshot: ClusterSnapshot, at: float) -> str:
    return f"{max(0.0, snapshot.observed_at - at):.0f}s ago"


_PARTITION_COLUMNS = (
    "TOPIC",
    "PARTITION",
    "LAG",
    "CONSUME/S",
    "PRODUCE/S",
    "CATCH-UP",
    "COMMIT-AGE",
    "STATUS",
    "REASON",
)


def _partition_lines(snapshot: ClusterSnapshot, group: str) -> list[str]:
    rows: list[Sequence[str]] = []
    for row in snapshot.rows:
        if row.group != group:
            continue
        health = (
            snapshot.health.partitions.get((group, row.topic_partition))
            if snapshot.health is not None
            else None
        )
        rows.append(
            (
                row.topic,
                str(row.partition),
                str(row.lag),
                format_rate(health.rates.consume if health else None),
                format_rate(health.rates.produce if health else None),
                format_catch_up(health.catch_up_seconds if health else None),
                f"{health.commit_age_seconds:.0f}s" if health else "-",
                health.status.name if health else "-",
                health.reason if health else "-",
            )
        )
    if not rows:
        return ["  (no committed offsets)"]
    widths = [len(c) for c in _PARTITION_COLUMNS]
    for cells in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        for cells in (_PARTITION_COLUMNS, *rows)
    ]
