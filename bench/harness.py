"""One benchmark run: a broker whose PROXIED listener advertises the counting proxy, a scenario,
the exporter as a child process, and the measurements of issue 9.

Timeline of ``run_preset``::

    broker + proxy + scenario ─▶ exporter start ─▶ first complete /metrics
      ─▶ cycle 1 (cold cache) ─▶ ≥ warm_cycles steady cycles ─▶ scrape phase (20 clients for
      scrape_cycles poll intervals) ─▶ exposition size ─▶ SIGTERM

Per cycle (at each ``cycle_completed`` log line, i.e. between cycles) the harness reads the
proxy's counters and the exporter's /proc entries, so request, byte and CPU figures are
per-cycle deltas. Steady-state figures exclude cycle 1 and the cycles that overlap the scrape
phase (those are reported separately).
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import gzip
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.processes import (
    REPO,
    Child,
    ProxyHandle,
    api_totals,
    api_versions,
    counting_proxy,
    free_port,
    sample_process,
    start_child,
    subtract,
)
from bench.scenario import Scenario, ScenarioPlan, ScenarioSpec, plan
from devtools.kafka_local import KAFKA_VERSION, KafkaCluster, PlaintextListener

RESULTS = REPO / "bench" / "results"

BENCH_BROKER_PROPERTIES = {
    # Idle-producer topics carry hours-old timestamps; accept any past timestamp.
    "log.message.timestamp.before.max.ms": str(2**63 - 1),
}

CLUSTER = "bench"
STOP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    poll_interval: float
    warm_cycles: int = 12
    scrapers: int = 20
    scrape_cycles: int = 2
    timestamp_sampling: bool = True
    health: bool = True
    """The consumer-health evaluation ([exporter.health], on by default)."""
    granularity: str = "partition"
    exporter_env: tuple[tuple[str, str], ...] = ()
    """Extra environment for the exporter process (e.g. MALLOC_ARENA_MAX=2)."""
    profile_dir: Path | None = None
    """When set, py-spy samples the exporter (collapsed stacks) during start-up + cold cycle,
    the steady cycles and the scrape phase: ``startup.txt``, ``steady.txt``, ``scrape.txt``."""


def settings_toml(
    bootstrap: str, http_port: int, options: RunOptions, prefix: str, cache_ttl: str = "60s"
) -> str:
    return f"""\
[exporter]
poll_interval = "{int(options.poll_interval * 1000)}ms"
http_host = "127.0.0.1"
http_port = {http_port}
granularity = "{options.granularity}"

[exporter.timestamp_sampling]
enabled = {"true" if options.timestamp_sampling else "false"}
cache_ttl = "{cache_ttl}"

[exporter.health]
enabled = {"true" if options.health else "false"}

[[clusters]]
name = "{CLUSTER}"
bootstrap_servers = "{bootstrap}"
group_whitelist = ["^{prefix}-"]
"""


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# -- the exporter child --------------------------------------------------------------------------


@dataclass
class CycleRecord:
    cycle: int
    duration_seconds: float
    rows: int
    groups: int
    errors: int
    seen_monotonic: float
    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int
    open_fds: int
    proxy: dict[str, dict[str, int]]


@dataclass
class ExporterRun:
    child: Child
    proxy: ProxyHandle | None
    started_monotonic: float
    cycles: list[CycleRecord] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    stderr_tail: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    finished: bool = False

    async def read_logs(self, on_cycle: Callable[[CycleRecord], None] | None = None) -> None:
        stream = self.child.process.stderr
        assert stream is not None
        while True:
            line = await stream.readline()
            if not line:
                break
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail = [*self.stderr_tail[-49:], text]
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                continue
            if event.get("level") in ("warning", "error", "critical"):
                name = str(event.get("event"))
                self.problems[name] = self.problems.get(name, 0) + 1
            if event.get("event") != "cycle_completed":
                continue
            record = await self._record(event)
            if record is None:
                break
            self.cycles.append(record)
            if on_cycle is not None:
                on_cycle(record)
            async with self.changed:
                self.changed.notify_all()
        self.finished = True
        async with self.changed:
            self.changed.notify_all()

    async def _record(self, event: dict[str, Any]) -> CycleRecord | None:
        try:
            proc = sample_process(self.child.pid)
        except (FileNotFoundError, ProcessLookupError):
            return None
        proxy = api_totals(await self.proxy.stats()) if self.proxy is not None else {}
        return CycleRecord(
            cycle=int(event["cycle"]),
            duration_seconds=float(event["duration_seconds"]),
            rows=int(event["rows"]),
            groups=int(event["groups"]),
            errors=int(event["errors"]),
            seen_monotonic=proc.monotonic,
            cpu_seconds=proc.cpu_seconds,
            rss_bytes=proc.rss_bytes,
            peak_rss_bytes=proc.peak_rss_bytes,
            open_fds=proc.open_fds,
            proxy=proxy,
        )

    async def wait_cycles(self, count: int, within: float) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: len(self.cycles) >= count or self.finished)
        if len(self.cycles) < count:
            tail = "\n".join(self.stderr_tail[-20:])
            raise RuntimeError(f"exporter stopped after {len(self.cycles)} cycles:\n{tail}")


def compile_bytecode() -> None:
    """Write the bytecode of the exporter's sources, as pip does when the image installs the
    wheel. Under PYTHONDONTWRITEBYTECODE=1 (set where the benchmarks run) nothing else writes it,
    and every start would compile the sources again, which no deployment pays. Files whose
    bytecode is up to date are only checked."""
    for package in ("klag_pipeline", "bench"):
        compileall.compile_dir(REPO / package, quiet=1)


@contextlib.asynccontextmanager
async def exporter_child(
    settings_path: Path,
    lag_path: Path,
    proxy: ProxyHandle | None,
    env: tuple[tuple[str, str], ...] = (),
) -> AsyncIterator[ExporterRun]:
    await asyncio.to_thread(compile_bytecode)
    started = time.monotonic()
    child = await start_child(
        "exporter",
        "-m",
        "bench.exporter_host",
        str(settings_path),
        "--loop-lag-out",
        str(lag_path),
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 20,
        env={**os.environ, **dict(env)},
    )
    run = ExporterRun(child, proxy, started)
    reader = asyncio.create_task(run.read_logs())
    try:
        yield run
    finally:
        await child.stop(STOP_TIMEOUT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await reader
        reader.cancel()


LAG_SECONDS = "kafka_consumergroup_group_lag_seconds"


async def time_to_complete_metrics(
    session: aiohttp.ClientSession,
    base: str,
    run: ExporterRun,
    rows: int,
    within: float,
    *,
    time_lag: bool = True,
) -> tuple[float, float | None, int]:
    """Seconds from process start until /metrics carries every expected row's offset lag, then
    until it also carries every row's time lag (None when ``time_lag`` is off), and how many
    polls it took. A first cycle publishes its offsets before its timestamp pass (docs/
    pipeline.md, "The first scrape"), so the two differ. /ready is polled first: it is cheap."""
    deadline = time.monotonic() + within
    polls = 0
    offsets: float | None = None
    while time.monotonic() < deadline:
        if run.finished:
            raise RuntimeError("exporter exited:\n" + "\n".join(run.stderr_tail[-20:]))
        polls += 1
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/ready") as response:
                ready = response.status == 200
            if ready:
                async with session.get(
                    f"{base}/metrics", headers={"Accept-Encoding": "gzip"}
                ) as response:
                    body = await response.read()
                    seen = time.monotonic() - run.started_monotonic
                if offsets is None and count_samples(body, "kafka_consumergroup_group_lag") >= rows:
                    offsets = seen
                if offsets is not None and not time_lag:
                    return offsets, None, polls
                if offsets is not None and count_samples(body, LAG_SECONDS) >= rows:
                    return offsets, seen, polls
        await asyncio.sleep(0.05)
    raise RuntimeError(f"/metrics not complete within {within:.0f}s")


def count_samples(body: bytes, family: str) -> int:
    prefix = f"\n{family}{{".encode()
    return body.count(prefix)


async def exposition_size(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as plain:
        text = await plain.read()
    async with session.get(
        f"{base}/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    ) as zipped:
        packed = await zipped.read()
        encoding = zipped.headers.get("Content-Encoding")
    lines = text.decode().splitlines()
    return {
        "text_bytes": len(text),
        "gzip_bytes": len(packed) if encoding == "gzip" else None,
        "gzip_roundtrip_ok": encoding == "gzip" and gzip.decompress(packed)[:100] == text[:100],
        "samples": sum(1 for line in lines if line and not line.startswith("#")),
        "group_lag_series": count_samples(text, "kafka_consumergroup_group_lag"),
        "lag_seconds_series": count_samples(text, LAG_SECONDS),
    }


SCRAPE_MODES: dict[str, tuple[str, int | None, float]] = {
    "burst": ("/metrics", None, 0.1),
    "saturation": ("/metrics", None, 0.0),
    "single": ("/metrics", 1, 0.0),
    # The same bursts on /health (a constant answer): what the event loop alone costs a request
    # in this run, the yardstick of /metrics latency (issue 17: p99 ≤ 1.5× that of /health).
    "health_burst": ("/health", None, 0.1),
}
"""mode → (path, clients, burst period): ``None`` clients = ``RunOptions.scrapers``; period 0 =
back to back. See bench/scrape.py."""


async def run_scrapers(
    url: str, concurrency: int, duration: float, period: float, out: Path
) -> list[list[Any]]:
    child = await start_child(
        "scrapers",
        "-m",
        "bench.scrape",
        url,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--period",
        str(period),
        "--out",
        str(out),
    )
    async with asyncio.timeout(duration + 120):
        code = await child.process.wait()
    if code != 0:
        raise RuntimeError(f"scrapers exited with {code}")
    data: list[list[Any]] = json.loads(await asyncio.to_thread(out.read_text))
    return data


@contextlib.asynccontextmanager
async def profiled(pid: int, out: Path | None) -> AsyncIterator[None]:
    """py-spy (from the dev extra) sampling ``pid`` for the duration of the block."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    process = await asyncio.create_subprocess_exec(
        str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
        "--output", str(out), "--nonblocking",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    child = Child(process, "py-spy")
    try:
        yield
    finally:
        # SIGINT makes py-spy write its output and exit.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await process.wait()
        await child.stop(grace=5.0)


def read_loop_lag(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- machine ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import aiokafka

    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "free_h": free.strip("\n"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiokafka": aiokafka.__version__,
        "kafka": KAFKA_VERSION,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- a preset run ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def proxied_cluster() -> AsyncIterator[tuple[KafkaCluster, ProxyHandle]]:
    """A single broker whose PROXIED listener advertises the proxy's port, and the proxy."""
    proxy_port = free_port()
    cluster = KafkaCluster(
        1,
        extra_broker_properties=BENCH_BROKER_PROPERTIES,
        listeners=[PlaintextListener("PROXIED", advertised_port=proxy_port)],
    )
    await asyncio.to_thread(cluster.start)
    try:
        async with counting_proxy(proxy_port, cluster.listener("PROXIED").bootstrap) as proxy:
            yield cluster, proxy
    finally:
        await asyncio.to_thread(cluster.stop)


def result_header(spec: ScenarioSpec, options: RunOptions) -> dict[str, Any]:
    """What every result file starts with: the command, the machine and its load, the scenario
    and the options."""
    return {
        "preset": spec.name,
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "started_at_unix": round(time.time(), 1),
        "machine": machine_info(),
        "load_average_before": load_average(),
        "scenario": asdict(spec),
        "options": {**asdict(options), "profile_dir": str(options.profile_dir or "") or None},
    }


async def run_preset(
    spec: ScenarioSpec, options: RunOptions, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Everything issue 9 asks for one preset, as a JSON-ready dict."""
    result = result_header(spec, options)
    with tempfile.TemporaryDirectory(prefix="klag-bench-") as workdir:
        work = Path(workdir)
        async with proxied_cluster() as (cluster, proxy):
            scenario_plan = plan(spec, int(time.time() * 1000))
            truth = scenario_plan.truth()
            result["truth"] = truth
            log(f"scenario {spec.name}: {json.dumps(truth)}")
            async with Scenario(cluster.bootstrap, scenario_plan) as scenario:
                result["setup_seconds"] = await scenario.setup(log)
                result["measurements"] = await _measure(proxy, scenario_plan, options, work, log)
    result["load_average_after"] = load_average()
    return result


async def _measure(
    proxy: ProxyHandle,
    scenario_plan: ScenarioPlan,
    options: RunOptions,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    truth = scenario_plan.truth()
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    settings = work / "settings.toml"
    settings.write_text(settings_toml(proxy.address, http_port, options, scenario_plan.spec.prefix))
    lag_path = work / "loop-lag.jsonl"
    before = api_totals(await proxy.stats())
    poll = options.poll_interval
    profiles = options.profile_dir
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        exporter_child(settings, lag_path, proxy, options.exporter_env) as run,
    ):
        async with profiled(run.child.pid, profiles and profiles / "startup.txt"):
            first_metrics, first_time_lag, _ = await time_to_complete_metrics(
                session,
                base,
                run,
                truth["rows"],
                within=max(120.0, 10 * poll),
                time_lag=options.timestamp_sampling,
            )
            await run.wait_cycles(1, within=poll + 120)
        log(f"first complete /metrics after {first_metrics:.2f}s (time lag: {first_time_lag}s)")
        steady_target = 1 + options.warm_cycles
        async with profiled(run.child.pid, profiles and profiles / "steady.txt"):
            await run.wait_cycles(steady_target, within=poll * (steady_target + 5) + 120)
        log(f"{len(run.cycles)} cycles done; scrape phase with {options.scrapers} clients")
        scrape_from = len(run.cycles)
        scrape_duration = max(4.0, poll * options.scrape_cycles)
        scrapes: dict[str, list[list[Any]]] = {}
        async with profiled(run.child.pid, profiles and profiles / "scrape.txt"):
            for mode, (path, clients, period) in SCRAPE_MODES.items():
                scrapes[mode] = await run_scrapers(
                    f"{base}{path}",
                    clients or options.scrapers,
                    scrape_duration,
                    period,
                    work / f"scrapes-{mode}.json",
                )
        await run.wait_cycles(len(run.cycles) + 1, within=poll * 3 + 60)
        scrape_to = len(run.cycles)
        exposition = await exposition_size(session, base)
        final = sample_process(run.child.pid)
        versions = api_versions(await proxy.stats())
    cycles = run.cycles
    lag = read_loop_lag(lag_path)
    return _summarise(
        cycles=cycles,
        before=before,
        scrape_range=(scrape_from, scrape_to),
        scrapes=scrapes,
        lag=lag,
        truth=truth,
        first_metrics=first_metrics,
        first_time_lag=first_time_lag,
        exposition=exposition,
        peak_rss=final.peak_rss_bytes,
        versions=versions,
        problems=run.problems,
        started=run.started_monotonic,
    )


def _cycle_rows(
    cycles: Sequence[CycleRecord], before: dict[str, dict[str, int]], start_cpu: float
) -> list[dict[str, Any]]:
    rows = []
    previous_proxy, previous_cpu = before, start_cpu
    for record in cycles:
        delta = subtract(record.proxy, previous_proxy)
        requests = {api: d["requests"] for api, d in sorted(delta.items())}
        rows.append(
            {
                "cycle": record.cycle,
                "duration_seconds": round(record.duration_seconds, 4),
                "rows": record.rows,
                "errors": record.errors,
                "cpu_seconds": round(record.cpu_seconds - previous_cpu, 3),
                "rss_mb": round(record.rss_bytes / 2**20, 1),
                "open_fds": record.open_fds,
                "requests": requests,
                "requests_total": sum(requests.values()),
                "requests_excluding_fetch": sum(n for api, n in requests.items() if api != "Fetch"),
                "fetch_requests": requests.get("Fetch", 0),
                "response_bytes": sum(d["response_bytes"] for d in delta.values()),
                "fetch_response_bytes": delta.get("Fetch", {}).get("response_bytes", 0),
                "request_bytes": sum(d["request_bytes"] for d in delta.values()),
            }
        )
        previous_proxy, previous_cpu = record.proxy, record.cpu_seconds
    return rows


def _stats(values: Sequence[float], digits: int = 4) -> dict[str, float | None]:
    return {
        "p50": _r(percentile(values, 50), digits),
        "p95": _r(percentile(values, 95), digits),
        "max": _r(max(values) if values else None, digits),
        "n": len(values),
    }


def _summarise(
    *,
    cycles: Sequence[CycleRecord],
    before: dict[str, dict[str, int]],
    scrape_range: tuple[int, int],
    scrapes: dict[str, list[list[Any]]],
    lag: Sequence[dict[str, Any]],
    truth: dict[str, Any],
    first_metrics: float,
    first_time_lag: float | None,
    exposition: dict[str, Any],
    peak_rss: int,
    versions: dict[str, list[int]],
    problems: dict[str, int],
    started: float,
) -> dict[str, Any]:
    # CPU before cycle 1 (imports, connect) belongs to start-up, not to a cycle: the first
    # row's CPU is measured from process start, reported as the cold cycle's.
    rows = _cycle_rows(cycles, before, 0.0)
    lo, hi = scrape_range
    cold = rows[0]
    steady = [r for i, r in enumerate(rows) if i >= 1 and not (lo <= i < hi + 1)]
    under_scrape = [r for i, r in enumerate(rows) if lo <= i < hi + 1]

    # Cycle windows in CLOCK_MONOTONIC: [seen − duration, seen].
    windows = [(c.seen_monotonic - c.duration_seconds, c.seen_monotonic) for c in cycles]
    steady_requests: dict[str, list[int]] = {}
    for r in steady:
        for api in {a for row in steady for a in row["requests"]}:
            steady_requests.setdefault(api, []).append(r["requests"].get(api, 0))

    lag_max = [w["max"] for w in lag]
    cycle_lag = [w["max"] for w in lag if any(a - 1.0 <= w["t"] <= b + 1.0 for a, b in windows)]
    first_done = cycles[0].seen_monotonic
    after_start = [w["max"] for w in lag if w["t"] - 1.0 > first_done]
    return {
        "cycles_observed": len(rows),
        "cycle_seconds_cold": cold["duration_seconds"],
        "cycle_seconds_steady": _stats([r["duration_seconds"] for r in steady]),
        "cycle_seconds_under_scrape": _stats([r["duration_seconds"] for r in under_scrape]),
        "cycle_errors_total": sum(r["errors"] for r in rows),
        "rows_reported": rows[-1]["rows"],
        "rows_expected": truth["rows"],
        "requests_cold": cold["requests"],
        "requests_per_cycle_steady_median": {
            api: statistics.median(v) for api, v in sorted(steady_requests.items())
        },
        "requests_excluding_fetch_steady_max": max(
            (r["requests_excluding_fetch"] for r in steady), default=None
        ),
        "requests_excluding_fetch_cold": cold["requests_excluding_fetch"],
        "fetch_requests_cold": cold["fetch_requests"],
        "fetch_budget_cold": truth["fetch_budget_cold"],
        "fetch_requests_steady": _stats([r["fetch_requests"] for r in steady], 1),
        "response_bytes_cold": cold["response_bytes"],
        "response_bytes_steady": _stats([r["response_bytes"] for r in steady], 0),
        "fetch_response_bytes_cold": cold["fetch_response_bytes"],
        "cpu_seconds_cold_incl_startup": cold["cpu_seconds"],
        "cpu_seconds_per_cycle_steady": _stats([r["cpu_seconds"] for r in steady], 3),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "rss_mb_last": rows[-1]["rss_mb"],
        "open_fds_last": rows[-1]["open_fds"],
        "first_complete_metrics_seconds": round(first_metrics, 3),
        "first_time_lag_metrics_seconds": _r(first_time_lag, 3),
        "scrape": {mode: _scrape_stats(done, windows) for mode, done in scrapes.items()},
        "exposition": exposition,
        "event_loop_lag": {
            "max_seconds": _r(max(lag_max) if lag_max else None),
            "max_seconds_during_cycles": _r(max(cycle_lag) if cycle_lag else None),
            "max_seconds_after_first_cycle": _r(max(after_start) if after_start else None),
            "windows_1s_with_lag_over_100ms": sum(1 for w in lag if w["over_100ms"]),
            "wakeups_over_100ms": sum(w["over_100ms"] for w in lag),
            "wakeups_over_50ms": sum(w["over_50ms"] for w in lag),
            "wakeups": sum(w["samples"] for w in lag),
            "gc_pause_max_seconds": _r(max((w.get("gc_max", 0.0) for w in lag), default=None)),
            "spikes_over_50ms": [
                {
                    "seconds_after_start": round(w["t"] - started, 1),
                    "max_seconds": w["max"],
                    "gc_max_seconds": w.get("gc_max"),
                    "cycle": next(
                        (c.cycle for c in cycles if c.seen_monotonic >= w["t"] - 1.0), None
                    ),
                }
                for w in lag
                if w["over_50ms"]
            ],
        },
        "api_versions_seen": versions,
        "exporter_warnings": problems,
        "per_cycle": rows,
    }


def _scrape_stats(
    scrapes: Sequence[Sequence[Any]], windows: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    ok = [s for s in scrapes if s[3] == 200]
    latencies = [s[1] for s in ok]
    during = [s[1] for s in ok if any(a <= s[0] <= b for a, b in windows)]
    span = (max(s[0] + s[1] for s in ok) - min(s[0] for s in ok)) if ok else 0.0
    return {
        "requests": len(scrapes),
        "non_200": len(scrapes) - len(ok),
        "per_second": round(len(ok) / span, 1) if span > 0 else None,
        "latency": {**_stats(latencies), "p99": _r(percentile(latencies, 99))},
        "latency_during_cycles": {**_stats(during), "p99": _r(percentile(during, 99))},
        "body_bytes_median": statistics.median([s[2] for s in ok]) if ok else None,
    }


def write_result(result: dict[str, Any], name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def main_log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
