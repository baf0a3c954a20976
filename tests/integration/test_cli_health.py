"""``once --window`` and ``status GROUP`` as the real command against the real broker (issue 14).

Three groups on one topic with 10 records: one caught up (OK), one with lag and no member
(STOPPED: its commit does not move during the run), one with a member that heartbeats and never
commits (STALLED). ``poll_interval`` is 1 s and the window 4 s: five cycles, thresholds shortened
to 3 s (commands/window.py), so each status is decided within the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.integration.test_cli_hung_cluster import MARGIN, command
from tests.support.kafka import KafkaTestClient, Rec, TopicPartition

WINDOW = 4.0


def settings_file(tmp_path: Path, bootstrap: str, prefix: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        '[exporter]\npoll_interval = "1s"\n\n'
        f'[[clusters]]\nname = "it"\nbootstrap_servers = "{bootstrap}"\n'
        f"group_whitelist = ['^{prefix}']\n"
    )
    return path


async def test_once_window_and_status_show_ok_stopped_and_stalled(
    tmp_path: Path,
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
) -> None:
    prefix = unique("h")
    topic, ok, stopped, stalled = (f"{prefix}-{n}" for n in ("t", "ok", "stopped", "stalled"))
    tp = TopicPartition(topic, 0)
    await kafka.create_topic(topic, partitions=1)
    await kafka.produce(topic, [Rec(b"x", partition=0)] * 10)
    await kafka.commit(ok, {tp: 10})
    await kafka.commit(stopped, {tp: 4})
    await kafka.commit(stalled, {tp: 2})
    path = settings_file(tmp_path, kafka_bootstrap, prefix)
    within = WINDOW + 2 * MARGIN + 10

    async with kafka.classic_member(stalled, topic, consume=False):
        table = await command("once", str(path), "--window", "4s", within=within)
        stalled_status = await command(
            "status", stalled, str(path), "--window", "4s", within=within
        )

    assert table.code == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split()[-4:] == ["STATUS", "CATCH-UP", "CONSUME/S", "REASON"]
    # CLUSTER GROUP STATE TOPIC PARTITION ... CLIENT-ID: 14 one-word cells, then STATUS, CATCH-UP.
    found = {cells[1]: cells[14:16] for cells in (line.split() for line in lines[1:])}
    assert found == {
        ok: ["OK", "0s"],
        stopped: ["STOPPED", "never"],
        stalled: ["STALLED", "never"],
    }, table.stdout
    # Five planned; a cycle slower than its interval on a loaded machine may end the run sooner.
    assert 3 <= len(table.events("cycle_done")) <= 5, table.stderr

    assert stalled_status.code == 13, stalled_status
    assert "  status        STALLED (3)" in stalled_status.stdout.splitlines()
    assert "reason        committed offset 2 unchanged for " in stalled_status.stdout

    stopped_status = await command("status", stopped, str(path), "--window", "4s", within=within)
    assert stopped_status.code == 14, stopped_status
    assert "  status        STOPPED (4)" in stopped_status.stdout.splitlines()

    ok_status = await command("status", ok, str(path), "--window", "2s", within=within)
    assert ok_status.code == 0, ok_status
    assert "  status        OK (0)" in ok_status.stdout.splitlines()

    missing = await command(
        "status", f"{prefix}-nobody", str(path), "--window", "2s", within=within
    )
    assert missing.code == 3, missing
    assert f"group '{prefix}-nobody' not found in it" in missing.stdout + missing.stderr
