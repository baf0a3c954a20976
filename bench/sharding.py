"""``python -m bench sharding``: 1, 2 and 4 sharded replicas on one scenario (issue 15).

For each replica count N, on the same broker and scenario: N exporter processes
(``bench.exporter_host``, one settings file each) share the scenario's groups through the
sharding group. Once every replica has published and the union of their ``/metrics`` carries
every row of the scenario exactly once, the harness lets ``warm_cycles`` more cycles pass and
reports per replica: CPU per steady cycle (p50/p95, from /proc at each ``cycle_completed``),
peak RSS, exposition size, rows and buckets owned, and requests per cycle — read from the
replica's own ``klag_pipeline_kafka_requests_total`` (the counting proxy sees every replica at
once). With N > 1 it then kills one replica with SIGKILL and measures the time until the
survivors export every row again (the session timeout dominates it).

Not a test: numbers only, written to ``bench/results/<name>.json`` and reported in
docs/benchmarks.md and docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    ExporterRun,
    RunOptions,
    exporter_child,
    load_average,
    proxied_cluster,
    result_header,
    settings_toml,
)
from bench.processes import free_port
from bench.scenario import Scenario, ScenarioSpec, plan

SESSION_TIMEOUT = 15.0
HEARTBEAT = 3.0
_REQUESTS = re.compile(rb"^klag_pipeline_kafka_requests_total\{[^}]*\} (\S+)$", re.M)
_BUCKETS = re.compile(rb"^klag_pipeline_shard_buckets\{[^}]*\} (\S+)$", re.M)
_ROW = b"\nkafka_consumergroup_group_lag{"


def sharded_settings(
    bootstrap: str, port: int, options: RunOptions, prefix: str, group: str, name: str
) -> str:
    return (
        settings_toml(bootstrap, port, options, prefix)
        + f"""
[exporter.sharding]
enabled = true
group_id = "{group}"
session_timeout = "{SESSION_TIMEOUT:g}s"
heartbeat_interval = "{HEARTBEAT:g}s"
identity = "{name}"
"""
    )


class Replica:
    def __init__(self, name: str, port: int, run: ExporterRun) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.run = run

    async def metrics(self, session: aiohttp.ClientSession) -> bytes | None:
        if self.run.finished:
            return None
        try:
            async with session.get(f"{self.base}/metrics") as response:
                return await response.read() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None


def _sum(pattern: re.Pattern[bytes], body: bytes) -> float:
    return sum(float(v) for v in pattern.findall(body))


async def _union_rows(session: aiohttp.ClientSession, replicas: Sequence[Replica]) -> int | None:
    """Rows exported by all ``replicas`` together; None until every one of them owns buckets
    (a first replica alone owns everything until the others have joined)."""
    bodies = await asyncio.gather(*(r.metrics(session) for r in replicas))
    if any(b is None or _sum(_BUCKETS, b) == 0 for b in bodies):
        return None
    return sum(b.count(_ROW) for b in bodies if b is not None)


async def _until_covered(
    session: aiohttp.ClientSession, replicas: Sequence[Replica], rows: int, within: float
) -> float:
    began = time.monotonic()
    while time.monotonic() - began < within:
        if await _union_rows(session, replicas) == rows:
            return time.monotonic() - began
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the replicas did not cover {rows} rows within {within:.0f}s")


async def _one_count(
    bootstrap: str,
    prefix: str,
    replicas_n: int,
    options: RunOptions,
    rows: int,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    group = f"{prefix}-shards-{replicas_n}-{int(time.time())}"
    poll = options.poll_interval
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        )
        replicas: list[Replica] = []
        for i in range(replicas_n):
            name = f"r{i + 1}"
            port = free_port()
            path = work / f"{name}-{replicas_n}.toml"
            path.write_text(sharded_settings(bootstrap, port, options, prefix, group, name))
            run = await stack.enter_async_context(
                exporter_child(path, work / f"{name}-{replicas_n}-lag.jsonl", None)
            )
            replicas.append(Replica(name, port, run))
        settled = await _until_covered(session, replicas, rows, within=300 + 10 * poll)
        log(f"{replicas_n} replica(s): every row exported after {settled:.1f}s")
        start_cycles = [len(r.run.cycles) for r in replicas]
        bodies = [await r.metrics(session) or b"" for r in replicas]
        requests_before = [_sum(_REQUESTS, b) for b in bodies]
        for replica, first in zip(replicas, start_cycles, strict=True):
            await replica.run.wait_cycles(
                first + options.warm_cycles, poll * (options.warm_cycles + 5) + 120
            )
        per_replica = []
        for replica, first, before in zip(replicas, start_cycles, requests_before, strict=True):
            body = await replica.metrics(session) or b""
            cycles = replica.run.cycles
            cpu = [
                b.cpu_seconds - a.cpu_seconds
                for a, b in zip(cycles[first:], cycles[first + 1 :], strict=False)
            ]
            done = len(cycles) - first
            per_replica.append(
                {
                    "replica": replica.name,
                    "buckets": _sum(_BUCKETS, body),
                    "rows": cycles[-1].rows,
                    "groups": cycles[-1].groups,
                    "cpu_seconds_per_cycle_p50": round(statistics.median(cpu), 3) if cpu else None,
                    "cpu_seconds_per_cycle_p95": round(sorted(cpu)[int(0.95 * (len(cpu) - 1))], 3)
                    if cpu
                    else None,
                    "cycle_seconds_p50": round(
                        statistics.median(c.duration_seconds for c in cycles[first:]), 3
                    ),
                    "peak_rss_mb": round(cycles[-1].peak_rss_bytes / 2**20, 1),
                    "exposition_bytes": len(body),
                    "requests_per_cycle": round((_sum(_REQUESTS, body) - before) / done, 1)
                    if done
                    else None,
                }
            )
        result: dict[str, Any] = {
            "replicas": replicas_n,
            "settle_seconds": round(settled, 1),
            "per_replica": per_replica,
        }
        if replicas_n > 1:
            victim = replicas[-1]
            victim.run.child.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            survivors = replicas[:-1]
            await _until_covered(session, survivors, rows, within=SESSION_TIMEOUT + 10 * poll + 120)
            covered = time.monotonic() - killed
            result["kill9_to_full_coverage_seconds"] = round(covered, 1)
            log(f"{replicas_n} replicas: full coverage {covered:.1f}s after kill -9")
    return result


async def run_sharding(
    spec: ScenarioSpec,
    counts: Sequence[int],
    options: RunOptions,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    result = result_header(spec, options) | {
        "poll_interval": options.poll_interval,
        "session_timeout": SESSION_TIMEOUT,
        "heartbeat_interval": HEARTBEAT,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="klag-bench-shard-") as workdir:
        async with proxied_cluster() as (cluster, proxy):
            scenario_plan = plan(spec, int(time.time() * 1000))
            truth = scenario_plan.truth()
            result["rows"] = truth["rows"]
            async with Scenario(cluster.bootstrap, scenario_plan) as scenario:
                result["setup_seconds"] = await scenario.setup(log)
                for n in counts:
                    run = await _one_count(
                        proxy.address, spec.prefix, n, options, truth["rows"], Path(workdir), log
                    )
                    run["load_average_after"] = load_average()
                    result["runs"].append(run)
                    log(json.dumps(run))
    result["load_average_after"] = load_average()
    return result
