"""``once`` and ``check --connect`` against a cluster that accepts connections and never answers
(issue 18, defect 5), run as the real command in a subprocess.

The hung "broker" is a loopback TCP server in the test that accepts and stays silent; the healthy
cluster is the session's real broker. Every command run is bounded (``--timeout`` plus a margin
for the interpreter start-up); logs are JSON lines on stderr (stderr is a pipe).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klag_pipeline.commands import EXIT_INTERRUPTED
from tests.integration.pipeline_support import silent_listener
from tests.support.kafka import KafkaTestClient, Rec, TopicPartition

REPO = Path(__file__).resolve().parents[2]
# Interpreter start-up, settings load and closing the clients, on a loaded 2-core machine.
MARGIN = 6.0


@dataclass
class Finished:
    code: int
    seconds: float
    stdout: str
    stderr: str

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry["event"] == name:
                    found.append(entry)
        return found


def settings_file(tmp_path: Path, clusters: dict[str, str], groups: str = ".*") -> Path:
    text = '[exporter]\npoll_interval = "30s"\n'
    for name, bootstrap in clusters.items():
        text += (
            f'\n[[clusters]]\nname = "{name}"\nbootstrap_servers = "{bootstrap}"\n'
            f"group_whitelist = ['{groups}']\n"
        )
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "klag_pipeline",
        *args,
        "--log-format",
        "json",
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("KLAG_")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def command(*args: str, within: float) -> Finished:
    started = time.monotonic()
    process = await start(*args)
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, time.monotonic() - started, out.decode(), err.decode())


async def test_once_names_the_silent_broker_and_step_within_the_timeout(tmp_path: Path) -> None:
    async with silent_listener() as port:
        broker = f"127.0.0.1:{port}"
        path = settings_file(tmp_path, {"hung": broker})
        done = await command("once", str(path), "--timeout", "3s", within=3 + MARGIN + 5)

    assert done.seconds < 3 + MARGIN, done
    assert done.code == 1, done
    # Progress while waiting: which cluster, which step, which broker, how long.
    waiting = done.events("cluster_waiting")
    assert waiting, done.stderr
    assert {(w["cluster"], w["step"], w["broker"]) for w in waiting} == {
        ("hung", "connect", broker)
    }
    # (A line may race the deadline by a scheduling delay.)
    assert all(0 < w["elapsed_seconds"] < 4 for w in waiting), waiting
    # The true outcome, never "no consumer groups".
    (failed,) = done.events("cluster_cycle_failed")
    assert failed["cluster"] == "hung"
    assert failed["error"] == f"no answer from broker {broker} within 3s (step: connect)"
    assert "no consumer groups" not in done.stdout + done.stderr
    assert "hung" in done.stdout  # the table says which cluster gave no answer


async def test_check_connect_names_the_silent_broker_within_the_timeout(tmp_path: Path) -> None:
    async with silent_listener() as port:
        broker = f"127.0.0.1:{port}"
        path = settings_file(tmp_path, {"hung": broker})
        done = await command(
            "check", str(path), "--connect", "--timeout", "3s", within=3 + MARGIN + 5
        )

    assert done.seconds < 3 + MARGIN, done
    assert done.code == 1, done
    assert {w["cluster"] for w in done.events("cluster_waiting")} == {"hung"}, done.stderr
    assert (
        f"cluster hung: FAILED: no answer from broker {broker} within 3s (step: connect)"
        in done.stdout.splitlines()
    ), done.stdout


async def test_once_prints_the_answering_cluster_and_names_the_silent_one(
    tmp_path: Path,
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", partition=p) for p in (0, 0, 0, 0, 1, 1)])
    await kafka.commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 2})
    async with silent_listener() as port:
        path = settings_file(
            tmp_path, {"good": kafka_bootstrap, "hung": f"127.0.0.1:{port}"}, groups=f"^{group}$"
        )
        done = await command("once", str(path), "--format", "json", "--timeout", "3s", within=20)

    assert done.code == 1, done
    (good,) = json.loads(done.stdout)["clusters"]
    lags = {(p["partition"], p["committed_offset"], p["lag"]) for p in good["partitions"]}
    assert lags == {(0, 1, 3), (1, 2, 0)}, good["partitions"]
    assert {p["group"] for p in good["partitions"]} == {group}
    (failed,) = done.events("cluster_cycle_failed")
    assert failed["cluster"] == "hung"
    assert failed["step"] == "connect"
    assert "hung" in {w["cluster"] for w in done.events("cluster_waiting")}


async def wait_for_line(stream: asyncio.StreamReader, event: str, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            line = await stream.readline()
            assert line, f"stderr closed before {event!r}"
            if json.loads(line)["event"] == event:
                return


async def test_first_ctrl_c_cancels_with_a_message_and_the_cluster_named(tmp_path: Path) -> None:
    async with silent_listener() as port:
        path = settings_file(tmp_path, {"hung": f"127.0.0.1:{port}"})
        process = await start("once", str(path), "--timeout", "60s")
        try:
            assert process.stderr is not None
            await wait_for_line(process.stderr, "cluster_waiting", within=MARGIN + 5)
            process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            async with asyncio.timeout(MARGIN):
                out, err = await process.communicate()
            took = time.monotonic() - sent
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    assert process.returncode == EXIT_INTERRUPTED
    assert took < MARGIN
    events = [json.loads(line) for line in err.decode().splitlines()]
    (interrupted,) = [e for e in events if e["event"] == "interrupted"]
    assert "Ctrl-C again" in interrupted["hint"]
    (failed,) = [e for e in events if e["event"] == "cluster_cycle_failed"]
    assert failed["cluster"] == "hung"
    assert failed["error"].startswith("interrupted after ")
    assert "no consumer groups" not in out.decode()


# A cluster whose client never answers and takes 30 s to close: the first Ctrl-C's graceful cancel
# is then slow (bounded by the close timeout), so the second one must cut it short.
SLOW_TO_CLOSE = """
import asyncio, sys
from klag_pipeline.commands.check import check_connect
from klag_pipeline.settings.schema import ClusterSettings, ExporterSettings, Settings
from klag_pipeline.telemetry.logging import configure_logging


class SlowToClose:
    async def connect(self):
        await asyncio.sleep(3600)

    async def close(self):
        await asyncio.sleep(30)


configure_logging("info", "json")
settings = Settings(ExporterSettings(), (ClusterSettings("slow", ("127.0.0.1:9",)),))
sys.exit(check_connect(settings, 60.0, client_factory=lambda *_: SlowToClose()))
"""


async def test_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    script = tmp_path / "slow_to_close.py"
    script.write_text(SLOW_TO_CLOSE)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        await wait_for_line(process.stderr, "cluster_waiting", within=MARGIN + 5)
        process.send_signal(signal.SIGINT)
        await wait_for_line(process.stderr, "interrupted", within=MARGIN)
        # Still closing (for up to the 5 s close timeout): the second Ctrl-C ends it now.
        assert process.returncode is None
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        async with asyncio.timeout(MARGIN):
            out, err = await process.communicate()
        took = time.monotonic() - sent
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == EXIT_INTERRUPTED
    assert took < 2.0, took
    events = [json.loads(line)["event"] for line in err.decode().splitlines()]
    assert events[-1] == "interrupted_again", events
    assert out == b""  # the graceful path never got to print its report
