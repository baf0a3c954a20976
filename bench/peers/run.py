"""One exporter measured on the compare run's broker, through the counting proxy.

The peers write no "cycle completed" line and two of them (KMinion, kafka_exporter) collect on
each scrape instead of on a timer, so a **cycle here is one poll interval**: the harness
scrapes ``/metrics`` once per interval, as a Prometheus would, and at each interval boundary
reads the proxy's counters and ``/proc/<pid>``. Requests, bytes and CPU per cycle are the
deltas between two boundaries; for a polling exporter that is one of its own cycles (its timer
drifts against ours, so medians are reported), for a scrape-driven one it is exactly the
collection that the one scrape caused.

Timeline: spawn → first complete scrape (every expected group-partition lag series present, in
the exporter's own names; polled every ``FIRST_POLL`` s, and each poll of a scrape-driven
exporter is a collection) → ``cycles`` intervals → 20-client bursts (bench/scrape.py) →
SIGTERM. Time-lag accuracy is judged on the last interval's scrape (bench/peers/truth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import percentile, run_scrapers
from bench.peers.contenders import Contender
from bench.peers.exposition import METRICS, Key, lag_series, time_lag_series
from bench.peers.truth import expected_rows, offset_lag_accuracy, time_lag_accuracy
from bench.processes import REPO, Child, ProxyHandle, api_totals, sample_process, subtract
from bench.scenario import ScenarioPlan

FIRST_POLL = 0.1
FIRST_COMPLETE_WITHIN = 300.0
TEXT_ACCEPT = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}
BURST_CLIENTS = 20
BURST_PERIOD = 0.1
STOP_GRACE = 30.0


def _stats(values: Sequence[float], digits: int = 4) -> dict[str, float | int | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
        "n": len(values),
    }


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


def _version_counts(snapshot: dict[str, Any]) -> dict[str, int]:
    return {f"{e['api']} v{e['version']}": int(e["requests"]) for e in snapshot["apis"]}


async def _spawn(contender: Contender, log_path: Path) -> tuple[Child, Any]:
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        *contender.command,
        cwd=contender.cwd or REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **contender.env},
    )
    return Child(process, contender.label), log


async def _get(session: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with session.get(url, headers=TEXT_ACCEPT) as response:
            return await response.text() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WARNING = re.compile(r"\b(WARN|WARNING|ERROR|warn|warning|error)\b")


def _log_lines(path: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return _ANSI.sub("", path.read_text(errors="replace")).splitlines()
    return []


def _tail(path: Path, lines: int = 15) -> list[str]:
    return _log_lines(path)[-lines:]


def _warnings(path: Path) -> dict[str, Any]:
    """Log lines that say warning or error (any format): how many, and the first few."""
    found = [line for line in _log_lines(path) if _WARNING.search(line)]
    return {"count": len(found), "first": [line[:300] for line in found[:5]]}


async def _first_complete(
    session: aiohttp.ClientSession, url: str, run: _Running, keys: set[Key], within: float
) -> tuple[float, int]:
    contender, child, started = run.contender, run.child, run.started
    family = METRICS[contender.peer].lag
    polls = seen_most = 0
    while time.monotonic() - started < within:
        if child.process.returncode is not None:
            tail = "\n".join(_tail(run.log_path))
            raise RuntimeError(f"{contender.label} exited ({child.process.returncode}):\n{tail}")
        polls += 1
        body = await _get(session, url)
        seen = time.monotonic()
        # A cheap count first: the full parse of a 6 MB body takes a while.
        count = body.count(f"\n{family}{{") if body is not None else 0
        seen_most = max(seen_most, count)
        if body and count >= len(keys) and keys <= lag_series(body, contender.peer).keys():
            return seen - started, polls
        await asyncio.sleep(FIRST_POLL)
    raise RuntimeError(
        f"{contender.label}: /metrics not complete within {within:.0f}s "
        f"(at most {seen_most} of {len(keys)} lag series seen, {polls} polls)"
    )


@dataclass
class _Running:
    contender: Contender
    child: Child
    proxy: ProxyHandle
    plan: ScenarioPlan
    poll: float
    started: float
    log_path: Path


async def measure(
    contender: Contender,
    proxy: ProxyHandle,
    plan: ScenarioPlan,
    poll: float,
    cycles: int,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every figure for one exporter; on failure the figures so far plus ``error``."""
    log_path = work / f"{_slug(contender.label)}.log"
    first_snapshot = await proxy.stats()
    result: dict[str, Any] = {
        "label": contender.label,
        "peer": contender.peer,
        "version": contender.version,
        "command": contender.command,
        "config": contender.config,
        "collects_on_scrape": not contender.polls,
        "metric_names": asdict(METRICS[contender.peer]),
    }
    started = time.monotonic()
    child, log_file = await _spawn(contender, log_path)
    running = _Running(contender, child, proxy, plan, poll, started, log_path)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            await _phases(running, session, cycles, work, log, result)
    except (RuntimeError, OSError, TimeoutError, aiohttp.ClientError) as error:
        # OSError: /proc/<pid> gone (the exporter died mid-run); the others: the proxy's /stats.
        log(f"{contender.label} failed: {error!r}")
        result["error"] = str(error) or repr(error)
    finally:
        result["exit_code"] = await child.stop(STOP_GRACE)
        log_file.close()
    last = await proxy.stats()
    before = _version_counts(first_snapshot)
    result["api_versions_used"] = sorted(
        k for k, n in _version_counts(last).items() if n > before.get(k, 0)
    )
    result["log_tail"] = _tail(log_path, 5)
    result["log_warnings"] = _warnings(log_path)
    return result


async def _phases(
    run: _Running,
    session: aiohttp.ClientSession,
    cycles: int,
    work: Path,
    log: Callable[[str], None],
    result: dict[str, Any],
) -> None:
    label, peer, pid = run.contender.label, run.contender.peer, run.child.pid
    url = f"http://127.0.0.1:{run.contender.port}/metrics"
    within = max(FIRST_COMPLETE_WITHIN, 20 * run.poll)
    first, polls = await _first_complete(session, url, run, set(expected_rows(run.plan)), within)
    log(f"{label}: first complete /metrics after {first:.2f}s ({polls} polls)")
    result["first_complete_seconds"] = round(first, 3)
    result["first_complete_polls"] = polls
    result["cpu_seconds_to_first_complete"] = sample_process(pid).cpu_seconds
    samples = []
    base = time.monotonic()
    body, scraped_at = "", 0.0
    for i in range(cycles + 1):
        await asyncio.sleep(max(0.0, base + i * run.poll - time.monotonic()))
        scraped_at = time.time()
        began = time.monotonic()
        body = await _get(session, url) or ""
        latency = time.monotonic() - began
        totals = api_totals(await run.proxy.stats())
        samples.append((latency, totals, sample_process(pid)))
    result.update(_cycles(samples))
    result["accuracy"] = {
        "scraped_at_unix": round(scraped_at, 3),
        "offset_lag": offset_lag_accuracy(run.plan, lag_series(body, peer)),
        "time_lag": time_lag_accuracy(run.plan, time_lag_series(body, peer), scraped_at, run.poll),
    }
    result["exposition_bytes"] = len(body.encode())
    log(f"{label}: {cycles} cycles; bursts of {BURST_CLIENTS}")
    result["bursts"] = await _bursts(url, run.poll, work, label)
    result["peak_rss_mb"] = round(sample_process(pid).peak_rss_bytes / 2**20, 1)


def _cycles(samples: Sequence[tuple[float, Any, Any]]) -> dict[str, Any]:
    rows = []
    for (_, totals_a, proc_a), (latency, totals_b, proc_b) in itertools.pairwise(samples):
        delta = subtract(totals_b, totals_a)
        requests = {api: d["requests"] for api, d in sorted(delta.items())}
        rows.append(
            {
                "requests": requests,
                "requests_total": sum(requests.values()),
                "response_bytes": sum(d["response_bytes"] for d in delta.values()),
                "request_bytes": sum(d["request_bytes"] for d in delta.values()),
                "cpu_seconds": round(proc_b.cpu_seconds - proc_a.cpu_seconds, 3),
                "rss_mb": round(proc_b.rss_bytes / 2**20, 1),
                "scrape_seconds": round(latency, 4),
            }
        )
    apis = sorted({api for row in rows for api in row["requests"]})
    return {
        "per_cycle": rows,
        "requests_per_cycle_median": {
            api: statistics.median(r["requests"].get(api, 0) for r in rows) for api in apis
        },
        "requests_per_cycle": _stats([r["requests_total"] for r in rows], 1),
        "response_bytes_per_cycle": _stats([r["response_bytes"] for r in rows], 0),
        "request_bytes_per_cycle": _stats([r["request_bytes"] for r in rows], 0),
        "cpu_seconds_per_cycle": _stats([r["cpu_seconds"] for r in rows], 3),
        "rss_mb": _stats([r["rss_mb"] for r in rows], 1),
        "prometheus_scrape_seconds": _stats([r["scrape_seconds"] for r in rows]),
    }


async def _bursts(url: str, poll: float, work: Path, label: str) -> dict[str, Any]:
    out = work / f"bursts-{_slug(label)}.json"
    try:
        done = await run_scrapers(url, BURST_CLIENTS, max(4.0, poll), BURST_PERIOD, out)
    except (RuntimeError, TimeoutError) as error:
        return {"error": str(error)}
    ok = [s for s in done if s[3] == 200]
    return {
        "clients": BURST_CLIENTS,
        "period_seconds": BURST_PERIOD,
        "requests": len(done),
        "non_200": len(done) - len(ok),
        "latency": _stats([s[1] for s in ok]),
    }
