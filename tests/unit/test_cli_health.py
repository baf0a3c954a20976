"""``once --window`` and ``status GROUP``: argument parsing, the run's plan and schedule, the
table's health columns and the status report, on hand-built snapshots and health (no broker)."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import pytest
import structlog

from klag_pipeline.cli import main
from klag_pipeline.collection import CollectionChain
from klag_pipeline.commands import status as status_command
from klag_pipeline.commands.progress import ClusterFailure, TrackedClient
from klag_pipeline.commands.window import CycleTimeout, Plan, run_cycles
from klag_pipeline.events import CycleStarted
from klag_pipeline.health.model import (
    ClusterHealth,
    GroupHealth,
    PartitionHealth,
    Rates,
    Status,
)
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.output import format_catch_up, render_table
from klag_pipeline.pipeline.clock import SystemClock
from klag_pipeline.settings.schema import ExporterSettings, HealthSettings, Settings
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionRow

SETTINGS = """
[exporter]
poll_interval = "5s"

[[clusters]]
name = "prod"
bootstrap_servers = "kafka-1:9092"
group_blacklist = ["^console-"]

[[clusters]]
name = "dr"
bootstrap_servers = "kafka-9:9092"
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


class FakeCommands(types.ModuleType):
    """Stands in for klag_pipeline.commands.once / .status: records how the CLI calls them."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def once(self, settings: Settings, *args: Any) -> int:
        self.calls.append(("once", args))
        return 0

    def status(self, settings: Settings, *args: Any) -> int:
        self.calls.append(("status", args))
        return 13


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCommands:
    commands = FakeCommands()
    for module in ("klag_pipeline.commands.once", "klag_pipeline.commands.status"):
        monkeypatch.setitem(sys.modules, module, commands)
    return commands


@pytest.fixture
def settings_path(tmp_path: Path) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(SETTINGS)
    return str(path)


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert isinstance(caught.value.code, int)
    return caught.value.code


# --- argument parsing -----------------------------------------------------------------------------


def test_once_window_is_a_duration_passed_after_the_timeout(
    fake: FakeCommands, settings_path: str
) -> None:
    assert run(["once", settings_path, "--window", "1m 30s", "--timeout", "5s"]) == 0
    assert run(["once", settings_path]) == 0
    # Without --window the call is the one-cycle call it always was.
    assert fake.calls == [("once", ("table", 5.0, 90.0)), ("once", ("table", 30.0))]


def test_status_takes_the_group_then_the_settings_and_returns_the_command_code(
    fake: FakeCommands, settings_path: str
) -> None:
    argv = ["status", "orders", settings_path, "--cluster", "dr", "--window", "45s"]
    assert run([*argv, "--timeout", "2s"]) == 13
    assert run(["status", "orders", "-c", settings_path]) == 13
    assert fake.calls == [
        ("status", ("orders", "dr", 45.0, 2.0)),
        ("status", ("orders", None, 30.0, 30.0)),
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["once", "--window", "500ms"],
        ["once", "--window", "2h"],
        ["once", "--window", "30"],
        ["status", "g", "--window", "soon"],
        ["status"],  # GROUP is required
    ],
)
def test_bad_window_or_missing_group_is_a_usage_error(
    fake: FakeCommands, settings_path: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*argv, "-c", settings_path]) == 2
    err = capsys.readouterr().err
    assert "--window" in err or "GROUP" in err, err
    assert fake.calls == []


# --- the run's plan -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "poll", "cycles", "interval"),
    [
        (30.0, 5.0, 7, 5.0),  # poll_interval apart
        (30.0, 30.0, 3, 15.0),  # at least three cycles
        (30.0, 7.0, 6, 6.0),  # equal intervals no longer than poll_interval
        (2.0, 30.0, 3, 1.0),
    ],
)
def test_plan_cuts_the_window_into_equal_intervals(
    window: float, poll: float, cycles: int, interval: float
) -> None:
    assert Plan.of(window, poll) == Plan(window, cycles, interval)


def test_plan_health_covers_the_run_and_shortens_unreachable_thresholds() -> None:
    exporter = ExporterSettings(
        poll_interval=5.0,
        health=HealthSettings(enabled=False, stalled_after=300.0, stopped_after=10.0),
    )
    run_exporter = Plan.of(30.0, 5.0).exporter(exporter)
    assert run_exporter.poll_interval == 5.0
    assert run_exporter.health == HealthSettings(
        enabled=True, window=35.0, stalled_after=25.0, stopped_after=10.0
    )


# --- the schedule ---------------------------------------------------------------------------------


class FakeChain:
    def __init__(self, hang_at: int = 0) -> None:
        self.events: list[tuple[float, CycleStarted]] = []
        self.hang_at = hang_at

    async def process(self, event: CycleStarted) -> ClusterSnapshot:
        self.events.append((time.monotonic(), event))
        if event.cycle == self.hang_at:
            await asyncio.sleep(60)
        return snapshot(cycle=event.cycle)


def client() -> TrackedClient:
    return TrackedClient(cast(ClusterClient, object()))


async def test_cycles_run_on_the_plan_and_the_last_snapshot_is_returned() -> None:
    chain = FakeChain()
    plan = Plan(window=0.4, cycles=3, interval=0.2)
    started = time.monotonic()
    last = await run_cycles(
        cast(CollectionChain, chain),
        "c",
        client(),
        plan,
        SystemClock(),
        cycle_timeout=5.0,
        command="once",
    )
    assert last.cycle == 3
    assert [e.cycle for _, e in chain.events] == [1, 2, 3]
    offsets = [at - started for at, _ in chain.events]
    # Never before its slot (the upper bound is generous for a loaded machine).
    assert all(k * 0.2 <= at < k * 0.2 + 0.15 for k, at in enumerate(offsets)), offsets


async def test_a_cycle_over_the_timeout_fails_the_cluster_naming_the_cycle() -> None:
    chain = FakeChain(hang_at=2)
    with pytest.raises(CycleTimeout) as caught:
        await run_cycles(
            cast(CollectionChain, chain),
            "c",
            client(),
            Plan(window=0.2, cycles=3, interval=0.1),
            SystemClock(),
            cycle_timeout=0.2,
            command="once",
        )
    assert str(caught.value) == "no answer within 200ms in cycle 2 of 3"


# --- hand-built snapshots -------------------------------------------------------------------------

TP0, TP1 = TopicPartition("orders", 0), TopicPartition("orders", 1)


def row(group: str, tp: TopicPartition, committed: int, high: int) -> PartitionRow:
    return PartitionRow(
        group=group,
        topic=tp.topic,
        partition=tp.partition,
        member_host="/10.0.0.1",
        consumer_id="c-1",
        client_id="app",
        committed=committed,
        low=0,
        high=high,
        lag=high - committed,
        lag_seconds=None,
        compaction_detected=False,
        data_loss_detected=False,
        messages_lost=0,
        retention_margin=committed,
        lag_retention_ratio=0.0,
    )


def group_summary(group: str, members: int = 1) -> GroupSummary:
    return GroupSummary(
        group=group,
        state=GroupState.STABLE if members else GroupState.EMPTY,
        protocol_type="consumer",
        group_type="classic",
        member_count=members,
        max_lag=250,
        max_lag_seconds=None,
        sum_lag=350,
        topic_sum_lag=MappingProxyType({}),
    )


INF = float("inf")
LONG_REASON = "committed offset 100 unchanged for 120s with lag 250 and a lot more words"
HEALTH = ClusterHealth(
    window_seconds=35.0,
    partitions=MappingProxyType(
        {
            ("app", TP0): PartitionHealth(
                Rates(1.5, 4.0, 2.5), INF, 120.0, Status.STALLED, LONG_REASON
            ),
            ("app", TP1): PartitionHealth(
                Rates(12.0, 2.0, -10.0), 10.0, 1.0, Status.OK, "consuming"
            ),
        }
    ),
    topics=MappingProxyType({}),
    groups=MappingProxyType(
        {
            "app": GroupHealth(Status.STALLED, LONG_REASON, 13.5, -7.5, INF, 2, 990.0),
            "idle": GroupHealth(Status.UNKNOWN, "no committed offsets", None, None, None, 0, None),
        }
    ),
    produce_rates=MappingProxyType({}),
)


def snapshot(*, cycle: int = 1, health: ClusterHealth | None = None) -> ClusterSnapshot:
    return ClusterSnapshot(
        cluster="prod",
        labels=MappingProxyType({}),
        cycle=cycle,
        observed_at=1000.0,
        started_at=999.0,
        duration_seconds=0.1,
        poll_time_ms=1.0,
        timestamp_sampling=False,
        partitions=(),
        groups=(group_summary("app"), group_summary("idle", members=0)),
        rows=(row("app", TP0, 100, 350), row("app", TP1, 900, 1000)),
        compaction_detected_count=0,
        data_loss_partition_count=0,
        error_count=0,
        health=health,
    )


def cells(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


# --- the table ------------------------------------------------------------------------------------


def test_table_without_health_keeps_its_columns() -> None:
    header = render_table([snapshot()], tty=False).splitlines()[0].split()
    assert header[-1] == "CLIENT-ID"
    assert "STATUS" not in header


def test_table_with_health_adds_status_catch_up_consume_rate_and_reason() -> None:
    table = render_table([snapshot(health=HEALTH)], tty=False).splitlines()
    header = table[0].split()
    assert header[-4:] == ["STATUS", "CATCH-UP", "CONSUME/S", "REASON"]
    # The reason is the last column: everything after CONSUME/S on the line.
    (p0,) = [line for line in table if " orders " in line and " 350 " in line]
    assert p0.split()[14:17] == ["STALLED", "never", "1.5"]
    reason = p0.split("1.5", 1)[1].strip()
    assert reason == LONG_REASON[:47] + "…"  # 48 characters at most
    (p1,) = [line for line in table if " 1000 " in line]
    assert p1.split()[14:] == ["OK", "10s", "12.0", "consuming"]
    # A group with no committed offsets shows the group's evaluation.
    (idle,) = [line for line in table if " idle " in line]
    assert idle.split()[-6:] == ["UNKNOWN", "-", "-", "no", "committed", "offsets"]


def test_stalled_and_stopped_rows_are_red_on_a_tty() -> None:
    table = render_table([snapshot(health=HEALTH)], tty=True).splitlines()
    (p0,) = [line for line in table if " 350 " in line]
    (p1,) = [line for line in table if " 1000 " in line]
    assert p0.startswith("\x1b[31m")
    assert not p1.startswith("\x1b[")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (float("inf"), "never"),
        (0.0, "0s"),
        (59.4, "59s"),
        (125.0, "2m05s"),
        (3600.0 * 3 + 20 * 60, "3h20m"),
        (86400.0 * 2 + 3600.0 * 4, "2d04h"),
    ],
)
def test_catch_up_for_humans(seconds: float | None, shown: str) -> None:
    assert format_catch_up(seconds) == shown


# --- status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.OK, 0),
        (Status.UNKNOWN, 9),
        (Status.LAGGING, 11),
        (Status.REWOUND, 12),
        (Status.STALLED, 13),
        (Status.STOPPED, 14),
    ],
)
def test_status_exit_codes_stay_clear_of_the_others(status: Status, code: int) -> None:
    assert status_command.exit_code(status) == code


def test_status_report_names_status_rates_catch_up_rebalances_and_partitions() -> None:
    text = status_command.render_group(snapshot(health=HEALTH), "app")
    lines = [line.split() for line in text.splitlines()]
    assert ["status", "STALLED", "(3)"] in lines
    assert ["consume", "rate", "13.5/s"] in lines
    assert ["lag", "velocity", "-7.5/s", "(positive:", "falling", "behind)"] in lines
    assert ["rebalances", "2", "(last:", "10s", "ago)"] in lines
    assert "catch-up      never (time until no lag at current rates)" in text
    assert ["orders", "1", "100", "12.0", "2.0", "10s", "1s", "OK", "consuming"] in lines
    # The whole reason here: the report is about one group, not a table to keep narrow.
    assert "120s        STALLED  " + LONG_REASON in text
    assert ["orders", "0", "250", "1.5", "4.0", "never", "120s", "STALLED"] in [
        line[:8] for line in lines
    ]


@pytest.fixture
def loaded(settings_path: str) -> Settings:
    from klag_pipeline.settings.loader import load_settings

    return load_settings(Path(settings_path), {}).settings


def fake_run(
    monkeypatch: pytest.MonkeyPatch,
    snapshots: list[ClusterSnapshot],
    failures: list[ClusterFailure] | None = None,
) -> list[Settings]:
    seen: list[Settings] = []

    async def interruptible(
        settings: Settings, time_limit: float, *, window: float | None = None, command: str = ""
    ) -> tuple[list[ClusterSnapshot], list[ClusterFailure], bool]:
        seen.append(settings)
        return snapshots, failures or [], False

    monkeypatch.setattr(status_command, "interruptible", interruptible)
    return seen


def test_status_runs_only_the_group_and_exits_with_its_status(
    monkeypatch: pytest.MonkeyPatch, loaded: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = fake_run(monkeypatch, [snapshot(health=HEALTH)])
    assert status_command.status(loaded, "app", "prod", 30.0, 5.0) == 13
    (narrowed,) = seen
    (cluster,) = narrowed.clusters
    assert cluster.name == "prod"
    assert [cluster.keeps_group(g) for g in ("app", "app2", "xapp")] == [True, False, False]
    assert "cluster prod, group app" in capsys.readouterr().out


def test_status_of_a_group_no_cluster_has_is_exit_3(
    monkeypatch: pytest.MonkeyPatch, loaded: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_run(monkeypatch, [snapshot(health=HEALTH)])
    assert status_command.status(loaded, "nope", None, 30.0, 5.0) == 3
    assert capsys.readouterr().err == "group 'nope' not found in prod\n"


def test_status_of_a_filtered_group_or_unknown_cluster_is_exit_3_without_connecting(
    monkeypatch: pytest.MonkeyPatch, loaded: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = fake_run(monkeypatch, [])
    assert status_command.status(loaded, "console-1", "prod", 30.0, 5.0) == 3
    assert status_command.status(loaded, "app", "qa", 30.0, 5.0) == 3
    assert seen == []
    assert capsys.readouterr().err.splitlines() == [
        "group 'console-1' is left out by the group_whitelist / group_blacklist of prod",
        "no cluster named 'qa' in the settings (clusters: prod, dr)",
    ]


def test_status_with_a_failed_cluster_is_exit_1_even_when_the_group_answered(
    monkeypatch: pytest.MonkeyPatch, loaded: Settings
) -> None:
    fake_run(monkeypatch, [snapshot(health=HEALTH)], [ClusterFailure("dr", "connect", "refused")])
    assert status_command.status(loaded, "app", None, 30.0, 5.0) == 1


def test_progress_is_quiet_between_cycles_and_in_a_cycle_under_a_second_old() -> None:
    tracked = client()
    now = time.monotonic()
    assert not tracked.quiet(now)  # the first cycle: reported as always
    tracked.rest("waiting for cycle 2 of 3")
    assert tracked.quiet(now)
    tracked._enter("list groups")  # what every request does
    assert tracked.quiet(time.monotonic())
    assert not tracked.quiet(time.monotonic() + 1.0)
