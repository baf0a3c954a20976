"""What ``klag-pipeline once`` prints: a table (like ``kafka-consumer-groups --describe`` plus
time lag, state, member and data-loss columns, and the health columns after ``--window``), JSON,
JSON lines or the Prometheus exposition."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from klag_pipeline.health.model import ClusterHealth, PartitionHealth, Status
from klag_pipeline.records import (
    cycle_record,
    group_records,
    partition_records,
    snapshot_records,
)
from klag_pipeline.settings.schema import Settings
from klag_pipeline.snapshot import ClusterSnapshot

FORMATS = ("table", "json", "jsonl", "prometheus")

_BOLD = "\x1b[1m"
_RED = "\x1b[31m"
_RESET = "\x1b[0m"

_COLUMNS = (
    "CLUSTER",
    "GROUP",
    "STATE",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-START-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "LAG-SECONDS",
    "DATA-LOSS",
    "CONSUMER-ID",
    "HOST",
    "CLIENT-ID",
)
# Only when the snapshots were evaluated (``once --window``): per partition, CATCH-UP is the time
# until no lag at current rates (not LAG-SECONDS, the age of the next record).
_HEALTH_COLUMNS = ("STATUS", "CATCH-UP", "CONSUME/S", "REASON")
# A reason names offsets and seconds; past this it only widens the table beyond a terminal.
REASON_WIDTH = 48
# Statuses of consumers that make no progress: shown like data loss on a TTY.
_ALARMING = frozenset({Status.STALLED, Status.STOPPED})


def format_catch_up(seconds: float | None, unknown: str = "-") -> str:
    """A duration for humans, as the table, ``status`` and the ``/`` page show catch-up time,
    time lag and commit age: ``never`` for +Inf (not gaining on the producer), ``unknown`` for
    None, whole seconds under an hour (``45s``, ``12m05s``), then hours (``3h20m``) and days."""
    if seconds is None or math.isnan(seconds):
        return unknown
    if math.isinf(seconds):
        return "never"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_rate(per_second: float | None) -> str:
    """A rate in records per second; ``-`` when unknown (fewer than two observations)."""
    return "-" if per_second is None else f"{per_second:.1f}"


def truncate(text: str, width: int = REASON_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _health_cells(health: PartitionHealth | None) -> tuple[str, ...]:
    if health is None:
        return ("-",) * len(_HEALTH_COLUMNS)
    return (
        health.status.name,
        format_catch_up(health.catch_up_seconds),
        format_rate(health.rates.consume),
        truncate(health.reason),
    )


def _group_health_cells(health: ClusterHealth | None, group: str) -> tuple[str, ...]:
    found = health.groups.get(group) if health is not None else None
    if found is None:
        return ("-",) * len(_HEALTH_COLUMNS)
    return (
        found.status.name,
        format_catch_up(found.max_catch_up_seconds),
        format_rate(found.consume_rate),
        truncate(found.reason),
    )


def _seconds(value: float | None, sampling: bool) -> str:
    if not sampling:
        return "-"
    if value is None:
        return "?"
    return f"{value:.1f}"


def render_table(
    snapshots: Sequence[ClusterSnapshot], *, tty: bool, failed: Sequence[str] = ()
) -> str:
    """``failed``: clusters that gave no answer (their errors go to stderr). "No groups" is said
    only of a cluster that answered, so a silent cluster never reads as an empty one. The health
    columns appear when any snapshot was evaluated."""
    evaluated = any(s.health is not None for s in snapshots)
    columns = _COLUMNS + _HEALTH_COLUMNS if evaluated else _COLUMNS
    rows: list[tuple[str, ...]] = []
    alarms: list[bool] = []
    notes: list[str] = []
    for snapshot in snapshots:
        if not snapshot.groups and not snapshot.rows:
            incomplete = (
                f"; {snapshot.error_count} requests failed, so the list may be incomplete"
                if snapshot.error_count
                else ""
            )
            notes.append(
                f"(cluster {snapshot.cluster}: no consumer groups matched the filters{incomplete})"
            )
        states = {g.group: g.state.name for g in snapshot.groups}
        committed_groups = set()
        for row in snapshot.rows:
            committed_groups.add(row.group)
            loss = "-"
            health = (
                snapshot.health.partitions.get((row.group, row.topic_partition))
                if snapshot.health is not None
                else None
            )
            if row.data_loss_detected:
                loss = f"LOST {row.messages_lost}"
            elif row.compaction_detected:
                loss = "compacted"
            rows.append(
                (
                    snapshot.cluster,
                    row.group,
                    states.get(row.group, "UNKNOWN"),
                    row.topic,
                    str(row.partition),
                    str(row.committed),
                    "?" if row.low is None else str(row.low),
                    str(row.high),
                    str(row.lag),
                    _seconds(row.lag_seconds, snapshot.timestamp_sampling),
                    loss,
                    row.consumer_id or "-",
                    row.member_host or "-",
                    row.client_id or "-",
                )
                + (_health_cells(health) if evaluated else ())
            )
            alarms.append(
                row.data_loss_detected or (health is not None and health.status in _ALARMING)
            )
        # Groups with no committed offset still deserve a line: they exist and have a state.
        for group in snapshot.groups:
            if group.group not in committed_groups:
                rows.append(
                    (snapshot.cluster, group.group, group.state.name)
                    + ("-",) * (len(_COLUMNS) - 3)
                    + (_group_health_cells(snapshot.health, group.group) if evaluated else ())
                )
                alarms.append(False)
    widths = [len(c) for c in columns]
    for cells in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, cells, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    header = line(columns)
    out = [f"{_BOLD}{header}{_RESET}" if tty else header]
    for cells, alarm in zip(rows, alarms, strict=True):
        text = line(cells)
        out.append(f"{_RED}{text}{_RESET}" if tty and alarm else text)
    out.extend(notes)
    if failed:
        out.append(f"(no result from {', '.join(failed)}: see the errors on stderr)")
    return "\n".join(out) + "\n"


def render_json(snapshots: Sequence[ClusterSnapshot]) -> str:
    document = {
        "clusters": [
            {
                "cycle": cycle_record(s),
                "groups": group_records(s),
                "partitions": partition_records(s),
            }
            for s in snapshots
        ]
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def render_jsonl(snapshots: Sequence[ClusterSnapshot]) -> str:
    lines: list[str] = []
    for snapshot in snapshots:
        # The JSON-lines sink's records (partitions, groups, cycle summary), written the same way.
        for record in snapshot_records(snapshot):
            lines.append(json.dumps(record, separators=(",", ":")))
    return "".join(line + "\n" for line in lines)


def render_once(
    snapshots: Sequence[ClusterSnapshot],
    settings: Settings,
    fmt: str,
    *,
    tty: bool,
    failed: Sequence[str] = (),
) -> str:
    """``failed`` names the clusters without an answer; only the table mentions them (the
    machine formats carry what was collected, the failures are on stderr and in the exit code)."""
    if fmt == "table":
        return render_table(snapshots, tty=tty, failed=failed)
    if fmt == "json":
        return render_json(snapshots)
    if fmt == "jsonl":
        return render_jsonl(snapshots)
    if fmt == "prometheus":
        from klag_pipeline.sinks.prometheus import render_snapshots

        return render_snapshots(snapshots, settings.exporter.granularity)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
