"""The JSON-lines sink: stdout and file modes, rotation, whole lines, failures that never escape.

Stdout, broken pipes and a full disk (RLIMIT_FSIZE) are exercised in child processes, because
they concern process-wide resources; everything else runs the sink in-process on real files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import structlog

from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.settings.schema import JsonlSettings
from klag_pipeline.sinks.jsonl import JsonlSink
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate
from tests.unit.test_otlp_sink import ErrorCounter, make_row, make_snapshot

REPO = Path(__file__).resolve().parents[2]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

PARTITION_KEYS = [
    "type",
    "schema_version",
    "timestamp",
    "cycle",
    "cluster_name",
    "group",
    "group_state",
    "group_state_code",
    "topic",
    "partition",
    "member_host",
    "consumer_id",
    "client_id",
    "committed_offset",
    "earliest_offset",
    "latest_offset",
    "lag",
    "lag_seconds",
    "compaction_detected",
    "data_loss_detected",
    "messages_lost",
    "retention_margin",
    "lag_retention_ratio",
    "consumable_lag",
    "carried_over",
]
CYCLE_KEYS = [
    "type",
    "schema_version",
    "timestamp",
    "cycle",
    "cluster_name",
    "started_at",
    "duration_seconds",
    "poll_time_ms",
    "group_count",
    "partition_count",
    "row_count",
    "lagging_row_count",
    "compaction_detected_count",
    "data_loss_partition_count",
    "error_count",
    "timestamp_sampling",
]


def cycle_snapshot(cycle: int, rows: int = 5, cluster: str = "prod") -> ClusterSnapshot:
    return make_snapshot(
        cluster,
        [make_row("g", p, committed=100 - p, high=100 + cycle) for p in range(rows)],
        cycle=cycle,
        labels={"env": "test"},
    )


@contextlib.asynccontextmanager
async def running(sink: JsonlSink, capacity: int = 8) -> AsyncIterator[Channel[SinkUpdate]]:
    """A blocking channel: a test that must lose nothing never has an item dropped."""
    channel = Channel[SinkUpdate](capacity, "sink.jsonl")
    task = asyncio.create_task(sink.run(channel))
    try:
        yield channel
    finally:
        channel.close()
        async with asyncio.timeout(30):
            await task


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """Every line of ``data`` as JSON; a missing final newline or a bad line fails the test."""
    assert data == b"" or data.endswith(b"\n"), f"partial last line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def rotated_files(path: Path) -> list[Path]:
    """``path.1``, ``path.2`` …, ``path``: oldest first (numbered files sort by their number)."""
    numbered = sorted(
        (
            p
            for p in path.parent.iterdir()
            if re.fullmatch(re.escape(path.name) + r"\.[1-9]\d*", p.name)
        ),
        key=lambda p: int(p.name.rsplit(".", 1)[1]),
    )
    return [*numbered, path] if path.exists() else numbered


def numbers(files: list[Path]) -> list[int]:
    return [int(f.name.rsplit(".", 1)[1]) for f in files if f.suffix[1:].isdigit()]


async def write_cycles(path: Path, cycles: range, *, rotate_bytes: int, keep_files: int) -> None:
    settings = JsonlSettings(
        enabled=True, path=str(path), rotate_bytes=rotate_bytes, keep_files=keep_files
    )
    async with running(JsonlSink(settings)) as inbox:
        for cycle in cycles:
            await inbox.send(cycle_snapshot(cycle))


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == name]


# -- records -------------------------------------------------------------------------------------


async def test_file_mode_appends_every_record_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    path.write_bytes(b'{"type":"from-before"}\n')
    rows = [
        make_row("billing", 0, member=("/10.0.0.7", "consumer-1-abc", "consumer-1")),
        make_row("billing", 1, lag_seconds=42.5, compaction=True),
        make_row("audit", 0, topic="pay", committed=5, low=20, high=90, lag_seconds=7.25),
        make_row("audit", 1, topic="pay", low=None, lag_seconds=None),
        make_row("audit", 2, topic="pay", committed=10, low=40, high=40, lag_seconds=3.0),
    ]
    snapshot = make_snapshot("prod", rows, cycle=7, labels={"env": "prod"})
    sink = JsonlSink(JsonlSettings(enabled=True, path=str(path)))
    async with running(sink) as inbox:
        await inbox.send(snapshot)
        await inbox.send(ClusterWithdrawn("prod", "stale"))

    records = parse_lines(path.read_bytes())
    assert records[0] == {"type": "from-before"}
    partition_records = [r for r in records if r["type"] == "partition"]
    types = ["partition"] * 5 + ["group"] * 2 + ["cycle", "withdrawn"]
    assert [r["type"] for r in records[1:]] == types
    assert sink.lines_written == 9
    assert {r["schema_version"] for r in records[1:]} == {2}
    # Without health (disabled, or too early) every health key is there, and null.
    assert {r["status"] for r in records[1:8]} == {None}
    for record, row in zip(partition_records, rows, strict=True):
        assert list(record)[: len(PARTITION_KEYS)] == PARTITION_KEYS
        assert record["labels"] == {"env": "prod"}
        assert RFC3339_UTC.match(record["timestamp"])
        assert record["timestamp"] == "2023-11-14T22:13:27.000Z"  # BASE_TIME + 7
        assert record["cycle"] == 7
        assert record["cluster_name"] == "prod"
        assert (record["group"], record["topic"], record["partition"]) == (
            row.group,
            row.topic,
            row.partition,
        )
        assert record["group_state"] == "stable"
        assert record["group_state_code"] == 3
        assert record["committed_offset"] == row.committed
        assert record["earliest_offset"] == row.low
        assert record["latest_offset"] == row.high
        assert record["lag"] == row.high - row.committed
        assert record["lag_seconds"] == row.lag_seconds
        assert record["compaction_detected"] is row.compaction_detected
        assert record["data_loss_detected"] is row.data_loss_detected
    member = partition_records[0]
    assert (member["member_host"], member["consumer_id"], member["client_id"]) == (
        "/10.0.0.7",
        "consumer-1-abc",
        "consumer-1",
    )
    assert partition_records[1]["compaction_detected"] is True
    loss = partition_records[2]
    assert (loss["messages_lost"], loss["retention_margin"], loss["data_loss_detected"]) == (
        15,
        -15,
        True,
    )
    assert math.isclose(loss["lag_retention_ratio"], 85 / 70 * 100)
    unknown_low = partition_records[3]
    assert unknown_low["earliest_offset"] is None
    assert unknown_low["messages_lost"] is None
    assert unknown_low["lag_seconds"] is None
    assert partition_records[4]["lag_retention_ratio"] == "+Inf"  # JSON has no Infinity

    # Lags 60 + 60 and 85 + 60 + 30, groups in the snapshot's (name) order.
    assert [(r["group"], r["sum_lag"]) for r in records[6:8]] == [("audit", 175), ("billing", 120)]
    cycle = records[8]
    assert list(cycle)[: len(CYCLE_KEYS)] == CYCLE_KEYS
    assert cycle["started_at"] == "2023-11-14T22:13:26.750Z"
    assert (cycle["group_count"], cycle["partition_count"], cycle["row_count"]) == (2, 5, 5)
    assert cycle["lagging_row_count"] == 5
    assert (cycle["compaction_detected_count"], cycle["data_loss_partition_count"]) == (1, 2)
    assert cycle["duration_seconds"] == 0.25
    assert cycle["poll_time_ms"] == 12.5
    withdrawn = records[9]
    assert withdrawn["cluster_name"] == "prod"
    assert withdrawn["reason"] == "stale"
    assert RFC3339_UTC.match(withdrawn["timestamp"])


async def test_only_lagging_keeps_lagging_rows_and_the_full_cycle_summary(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    rows = [
        make_row("g", 0, committed=110),  # caught up
        make_row("g", 1, committed=100),
        make_row("h", 0, committed=110),
    ]
    sink = JsonlSink(JsonlSettings(enabled=True, path=str(path), only_lagging=True))
    async with running(sink) as inbox:
        await inbox.send(make_snapshot("prod", rows))
    records = parse_lines(path.read_bytes())
    # Every group keeps its record (its status matters most when nothing lags).
    assert [(r["type"], r.get("group"), r.get("partition")) for r in records] == [
        ("partition", "g", 1),
        ("group", "g", None),
        ("group", "h", None),
        ("cycle", None, None),
    ]
    assert (records[3]["row_count"], records[3]["lagging_row_count"]) == (3, 1)


# -- rotation ------------------------------------------------------------------------------------


async def test_rotation_under_continuous_writing_loses_and_splits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    cycles, rows = 300, 5
    rotate_bytes = 8192
    # keep_files at its documented maximum: a rotation's cost must not grow with it.
    sink = JsonlSink(
        JsonlSettings(enabled=True, path=str(path), rotate_bytes=rotate_bytes, keep_files=1000)
    )
    async with running(sink) as inbox:
        for cycle in range(1, cycles + 1):
            await inbox.send(cycle_snapshot(cycle, rows))

    files = rotated_files(path)
    assert len(files) > 10, "the test must actually rotate"
    assert numbers(files) == list(range(1, len(files))), "numbered 1, 2, … in rotation order"
    seen: list[int] = []
    for file in files:
        data = file.read_bytes()
        assert len(data) <= rotate_bytes
        records = parse_lines(data)
        per_cycle: dict[int, list[str]] = {}
        for record in records:
            per_cycle.setdefault(record["cycle"], []).append(record["type"])
        for cycle, types in per_cycle.items():
            # A cycle is never split across files: all its rows and its summary are here.
            assert types == ["partition"] * rows + ["group", "cycle"], (file.name, cycle)
        seen.extend(per_cycle)
    assert seen == list(range(1, cycles + 1))
    assert sink.lines_written == cycles * (rows + 2)  # + the group record and the summary


async def test_a_rotated_file_keeps_its_name(tmp_path: Path) -> None:
    """One rename per rotation: the kept files are never renamed again (shippers that track
    files by name see each rotated file once)."""
    path = tmp_path / "lag.jsonl"
    await write_cycles(path, range(1, 5), rotate_bytes=4096, keep_files=1000)
    first = {f.name: (f.stat().st_ino, f.read_bytes()) for f in rotated_files(path)[:-1]}
    assert first, "the test must rotate"
    await write_cycles(path, range(5, 30), rotate_bytes=4096, keep_files=1000)
    for name, (inode, data) in first.items():
        renamed = tmp_path / name
        assert (renamed.stat().st_ino, renamed.read_bytes()) == (inode, data), name


async def test_keep_files_bounds_the_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    await write_cycles(path, range(1, 41), rotate_bytes=4096, keep_files=3)
    files = rotated_files(path)
    assert len(files) == 4
    newest = numbers(files)[-1]
    assert newest > 3, "the test must rotate past keep_files"
    assert [f.name for f in files] == [f"lag.jsonl.{n}" for n in range(newest - 2, newest + 1)] + [
        "lag.jsonl"
    ]
    cycles = [
        r["cycle"] for f in files for r in parse_lines(f.read_bytes()) if r["type"] == "cycle"
    ]
    assert cycles == list(range(cycles[0], 41)), "the newest cycles, contiguous"


async def test_a_restart_continues_the_sequence_and_leaves_other_files_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lag.jsonl"
    others = ["lag.jsonl.bak", "lag.jsonl.007", "lag.jsonl.0", "lag.jsonl.1.gz", "other.jsonl.1"]
    for name in others:
        (tmp_path / name).write_text("not the sink's\n")
    await write_cycles(path, range(1, 21), rotate_bytes=4096, keep_files=5)
    before = numbers(rotated_files(path))
    assert len(before) == 5
    # A restart with fewer files to keep: numbering goes on after the highest, the surplus goes.
    await write_cycles(path, range(21, 41), rotate_bytes=4096, keep_files=2)
    after = numbers(rotated_files(path))
    assert after == [after[-1] - 1, after[-1]]
    assert after[0] > before[-1]
    for name in others:
        assert (tmp_path / name).read_text() == "not the sink's\n", name
    cycles = [
        r["cycle"]
        for f in rotated_files(path)
        for r in parse_lines(f.read_bytes())
        if r["type"] == "cycle"
    ]
    assert cycles == list(range(cycles[0], 41)), "the newest cycles, contiguous"


async def test_keep_files_zero_keeps_only_the_live_file(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    sink = JsonlSink(JsonlSettings(enabled=True, path=str(path), rotate_bytes=4096, keep_files=0))
    async with running(sink) as inbox:
        for cycle in range(1, 21):
            await inbox.send(cycle_snapshot(cycle))
    assert rotated_files(path) == [path]
    assert parse_lines(path.read_bytes())[-1]["cycle"] == 20


async def test_a_cycle_larger_than_rotate_bytes_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    sink = JsonlSink(JsonlSettings(enabled=True, path=str(path), rotate_bytes=1024, keep_files=5))
    async with running(sink) as inbox:
        await inbox.send(cycle_snapshot(1, rows=2))
        await inbox.send(cycle_snapshot(2, rows=40))
    assert [len(parse_lines(f.read_bytes())) for f in rotated_files(path)] == [4, 42]


# -- failures ------------------------------------------------------------------------------------


async def test_unwritable_path_is_reported_once_and_the_sink_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the sink needs a directory")
    path = blocker / "lag.jsonl"
    errors = ErrorCounter()
    sink = JsonlSink(JsonlSettings(enabled=True, path=str(path)), on_error=errors)
    with captured_logs() as logs:
        async with running(sink, capacity=1) as inbox:
            for cycle in (1, 2, 3):
                await inbox.send(cycle_snapshot(cycle))
            # Capacity 1: once cycle 4 is accepted, the sink has taken cycle 3, so it has
            # finished writing cycles 1 and 2.
            await inbox.send(cycle_snapshot(4))
            assert errors.count >= 2
            blocker.unlink()
            await inbox.send(cycle_snapshot(5))
    assert errors.names == ["jsonl"] * errors.count
    assert len(events(logs, "jsonl_write_failed")) == 1
    assert events(logs, "jsonl_write_failed")[0]["path"] == str(path)
    assert len(events(logs, "jsonl_write_recovered")) == 1
    written = {r["cycle"] for r in parse_lines(path.read_bytes())}
    assert 5 in written
    assert 1 not in written


CHILD = """
import asyncio, json, resource, signal, sys
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.settings.schema import JsonlSettings
from klag_pipeline.sinks.jsonl import JsonlSink
from klag_pipeline.telemetry.logging import configure_logging
from tests.unit.test_jsonl_sink import cycle_snapshot

mode, path, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
configure_logging("info", "json")
if mode == "fsize":
    # A full disk, without one: writes past the limit fail with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[4]), int(sys.argv[4])))

async def main():
    errors = []
    sink = JsonlSink(JsonlSettings(enabled=True, path=path), on_error=errors.append)
    channel = Channel(1, "sink.jsonl")
    task = asyncio.create_task(sink.run(channel))
    await channel.send(cycle_snapshot(1))
    if mode == "pipe":
        await channel.send(cycle_snapshot(2))  # cycle 1 has been written once this returns
        sys.stdin.readline()  # the parent has closed its end of stdout meanwhile
    for cycle in range(3 if mode == "pipe" else 2, cycles + 1):
        await channel.send(cycle_snapshot(cycle))
    channel.close()
    await task
    summary = {"errors": len(errors), "lines_written": sink.lines_written}
    print("SUMMARY " + json.dumps(summary), file=sys.stderr)

asyncio.run(main())
"""


def run_child(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def summary_of(stderr: bytes) -> dict[str, int]:
    lines = [line for line in stderr.decode().splitlines() if line.startswith("SUMMARY ")]
    assert len(lines) == 1, stderr.decode()
    return dict(json.loads(lines[0].removeprefix("SUMMARY ")))


def log_events(stderr: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


def test_stdout_mode_writes_only_json_lines_and_logs_go_to_stderr() -> None:
    child = run_child("stdout", "-", "4")
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr.decode()
    records = parse_lines(stdout)
    assert [r["type"] for r in records] == (["partition"] * 5 + ["group", "cycle"]) * 4
    assert [r["cycle"] for r in records if r["type"] == "cycle"] == [1, 2, 3, 4]
    assert summary_of(stderr) == {"errors": 0, "lines_written": 28}


def test_a_broken_stdout_pipe_is_reported_once_and_never_crashes() -> None:
    child = run_child("pipe", "-", "6")
    assert child.stdout is not None
    assert child.stdin is not None
    first = [child.stdout.readline() for _ in range(7)]
    assert [json.loads(line)["cycle"] for line in first] == [1] * 7
    child.stdout.close()  # the reader goes away (like `| head`)
    child.stdin.write(b"go\n")
    child.stdin.close()
    assert child.stderr is not None
    stderr = child.stderr.read()
    assert child.wait(timeout=60) == 0, stderr.decode()
    summary = summary_of(stderr)
    assert summary["errors"] >= 4  # cycles 3..6 at least; cycle 2 may still fit in the pipe
    failed = [e for e in log_events(stderr) if e["event"] == "jsonl_write_failed"]
    assert len(failed) == 1
    assert failed[0]["level"] == "error"
    assert "Broken pipe" in failed[0]["error"]


def test_a_full_disk_leaves_only_whole_lines_and_never_crashes(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    limit = 10000  # room for two cycles of ~4.5 kB, then every write fails
    child = run_child("fsize", str(path), "12", str(limit))
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr.decode()
    data = path.read_bytes()
    records = parse_lines(data)  # ends on a newline: the half-written cycle was taken back
    cycles = [r["cycle"] for r in records if r["type"] == "cycle"]
    assert cycles == list(range(1, len(cycles) + 1))
    assert len(records) == len(cycles) * 7
    summary = summary_of(stderr)
    assert summary["errors"] == 12 - len(cycles) > 0
    assert summary["lines_written"] == len(records)
    failed = [e for e in log_events(stderr) if e["event"] == "jsonl_write_failed"]
    assert len(failed) == 1
    assert "File too large" in failed[0]["error"]
