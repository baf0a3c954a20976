"""SIGTERM while a cycle is in flight: ``klag-pipeline run`` (a real process, JSON-lines sink to
a file) exits 0 within the documented shutdown bound and leaves no torn JSON-lines record."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.processes import free_port
from tests.faults.broker import FaultsBroker
from tests.faults.proxy import FaultProxy
from tests.faults.support import create_truth
from tests.support.kafka import KafkaTestClient
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

SHUTDOWN_BOUND = 10.0
"""docs/pipeline.md / decisions.md: the whole shutdown is bounded by 10 s."""
REPO = Path(__file__).resolve().parents[2]


def cycle_records(path: Path) -> list[dict[str, object]]:
    """Every line parsed (a torn line fails here); only the cycle summaries are returned."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    assert not text or text.endswith("\n"), f"last line is torn: {text[-200:]!r}"
    records = [json.loads(line) for line in text.splitlines()]
    return [r for r in records if r["type"] == "cycle"]


async def test_sigterm_during_a_slow_cycle_exits_0_in_bound_without_a_torn_record(
    faults_broker: FaultsBroker,
    fault_proxy: FaultProxy,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topic, group = unique("sg"), unique("sg")
    state = await create_truth(truth, [topic], [group], partitions=2)
    lines = tmp_path / "lag.jsonl"
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f"""\
[exporter]
poll_interval = "4s"
http_host = "127.0.0.1"
http_port = {free_port()}

[exporter.performance]
kafka_timeout = "3s"

[exporter.jsonl]
enabled = true
path = "{lines}"

[[clusters]]
name = "sigterm"
bootstrap_servers = "127.0.0.1:{faults_broker.proxy_port}"
group_whitelist = ["^{group}$"]
topic_whitelist = ["^{topic}$"]
""",
        encoding="utf-8",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "klag_pipeline",
        "run",
        str(settings),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60

        def first_cycle() -> bool:
            assert process.returncode is None, "exporter exited before its first cycle"
            return bool(cycle_records(lines))

        await wait_until(first_cycle, within=60, message="a cycle written")
        # Every answer 1.5 s late: a cycle now takes several seconds; wait until one of its
        # requests is being held back, then stop the process in the middle of it.
        fault_proxy.slow(1.5)
        await wait_until(
            lambda: fault_proxy.stats.delayed_now > 0,
            within=deadline - time.monotonic(),  # what is left of the 60 s
            interval=0.02,
            message="a request in flight",
        )
        await asyncio.sleep(0.3)
        assert fault_proxy.stats.delayed_now > 0
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(SHUTDOWN_BOUND + 20):
            _, stderr = await process.communicate()
        took = time.monotonic() - stopped
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = stderr.decode(errors="replace")
    assert process.returncode == 0, log[-3000:]
    assert took <= SHUTDOWN_BOUND + 2.0, f"shutdown took {took:.1f}s"
    assert "exporter_stopped" in log
    assert "Traceback" not in log, log[-3000:]
    # Whole lines only, every cycle complete (its partition records, then its summary), and
    # every value exact.
    records = [json.loads(line) for line in lines.read_text(encoding="utf-8").splitlines()]
    assert records[-1]["type"] == "cycle"
    for record in records:
        if record["type"] != "partition":
            continue
        tp = next(
            tp for tp in state.high if (tp.topic, tp.partition) == (topic, record["partition"])
        )
        committed = state.commits[group][tp]
        assert record["committed_offset"] == committed
        assert record["latest_offset"] == state.high[tp]
        assert record["lag"] == state.high[tp] - committed
    by_cycle: dict[object, int] = {}
    for record in records:
        if record["type"] == "partition":
            by_cycle[record["cycle"]] = by_cycle.get(record["cycle"], 0) + 1
    for summary in (r for r in records if r["type"] == "cycle"):
        assert by_cycle.get(summary["cycle"], 0) == summary["row_count"], summary
