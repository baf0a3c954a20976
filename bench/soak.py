"""Soak: many cycles with churn; the exporter's RSS and open descriptors must stay flat.

Every ``churn_every`` cycles the harness (on the broker's direct listener, never through the
proxy) creates a new commit-only group and deletes the oldest churn group once ten exist, lets a
member join or leave one of a few churn groups (rebalances, Stable ↔ Empty), moves one lagging
group's commits forward (new offsets: timestamp cache misses), and appends records to one
active partition (high watermarks move, caught-up groups start lagging). After every cycle the
exporter's RSS and descriptor count are read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    CycleRecord,
    RunOptions,
    exporter_child,
    load_average,
    machine_info,
    proxied_cluster,
    read_loop_lag,
    settings_toml,
    time_to_complete_metrics,
)
from bench.processes import free_port
from bench.scenario import Scenario, ScenarioPlan, ScenarioSpec, plan

CHURN_LIVE_GROUPS = 3
CHURN_KEEP_GROUPS = 10
CHURN_STEP_TIMEOUT = 60.0


class Churn:
    def __init__(self, scenario: Scenario, scenario_plan: ScenarioPlan, seed: int) -> None:
        self.scenario = scenario
        self.plan = scenario_plan
        self.rng = random.Random(seed)
        self.active = [t for t in scenario_plan.topics if not t.idle]
        self.lagging = [g for g in scenario_plan.groups if g.kind == "lagging"]
        self.created: deque[str] = deque()
        self.serial = 0
        self.steps = 0
        self.counts = {"groups_created": 0, "groups_deleted": 0, "joins": 0, "leaves": 0}
        self.counts |= {"commits_moved": 0, "records_appended": 0}

    async def step(self) -> None:
        spec = self.plan.spec
        prefix = spec.prefix
        topic = self.rng.choice(self.active)
        positions = range(1, spec.records_per_partition)
        self.serial += 1
        group = f"{prefix}-churn-{self.serial:06d}"
        commits = {(topic.name, p): self.rng.choice(positions) for p in range(spec.partitions)}
        await self.scenario.commit(group, commits)
        self.created.append(group)
        self.counts["groups_created"] += 1
        if len(self.created) > CHURN_KEEP_GROUPS:
            await self.scenario.delete_groups([self.created.popleft()])
            self.counts["groups_deleted"] += 1

        live = f"{prefix}-churnlive-{self.steps % CHURN_LIVE_GROUPS}"
        if live in self.scenario.members:
            await self.scenario.stop_member(live)
            self.counts["leaves"] += 1
        else:
            await self.scenario.start_member(live, [self.active[0].name])
            self.counts["joins"] += 1

        if self.lagging:
            moved = self.rng.choice(self.lagging)
            forward = {tp: offset + 1 + self.steps % 3 for tp, offset in moved.commits.items()}
            await self.scenario.commit(moved.group_id, forward)
            self.counts["commits_moved"] += 1

        await self.scenario.produce_more(
            topic.name, self.rng.randrange(spec.partitions), 5, int(time.time() * 1000)
        )
        self.counts["records_appended"] += 5
        self.steps += 1


def _slope_per_100(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def summarise_soak(cycles: Sequence[CycleRecord]) -> dict[str, Any]:
    n = len(cycles)
    tenth = max(1, n // 10)
    # Skip the warm-up (first 5 % of cycles): caches and pools fill there by design.
    settled = cycles[max(1, n // 20) :]
    rss = [c.rss_bytes / 2**20 for c in settled]
    fds = [c.open_fds for c in settled]
    xs = [float(c.cycle) for c in settled]
    return {
        "cycles": n,
        "cycles_with_errors": sum(1 for c in cycles if c.errors),
        "cycle_seconds": {
            "p50": round(statistics.median(c.duration_seconds for c in cycles), 4),
            "max": round(max(c.duration_seconds for c in cycles), 4),
        },
        "rss_mb": {
            "first_tenth_median": round(statistics.median(rss[:tenth]), 1),
            "last_tenth_median": round(statistics.median(rss[-tenth:]), 1),
            "min": round(min(rss), 1),
            "max": round(max(rss), 1),
            "slope_mb_per_100_cycles": _round(_slope_per_100(xs, rss), 3),
        },
        "open_fds": {
            "first_tenth_max": max(fds[:tenth]),
            "last_tenth_max": max(fds[-tenth:]),
            "min": min(fds),
            "max": max(fds),
            "slope_per_100_cycles": _round(_slope_per_100(xs, [float(f) for f in fds]), 3),
        },
        "peak_rss_mb": round(max(c.peak_rss_bytes for c in cycles) / 2**20, 1),
        "cpu_seconds_total": round(cycles[-1].cpu_seconds, 2),
        "series": [
            {
                "cycle": c.cycle,
                "rss_mb": round(c.rss_bytes / 2**20, 1),
                "fds": c.open_fds,
                "duration_seconds": round(c.duration_seconds, 4),
                "rows": c.rows,
                "groups": c.groups,
            }
            for i, c in enumerate(cycles)
            if i % 10 == 0 or i == n - 1
        ],
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def run_soak(
    spec: ScenarioSpec,
    poll_interval: float,
    cycles: int,
    churn_every: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    options = RunOptions(poll_interval=poll_interval)
    result: dict[str, Any] = {
        "mode": "soak",
        "preset": spec.name,
        "started_at_unix": round(time.time(), 1),
        "machine": machine_info(),
        "load_average_before": load_average(),
        "scenario": asdict(spec),
        "options": {**asdict(options), "cycles": cycles, "churn_every": churn_every},
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="klag-soak-") as workdir:
        work = Path(workdir)
        async with proxied_cluster() as (cluster, proxy):
            scenario_plan = plan(spec, int(time.time() * 1000))
            async with Scenario(cluster.bootstrap, scenario_plan) as scenario:
                result["setup_seconds"] = await scenario.setup(log)
                http_port = free_port()
                settings = work / "settings.toml"
                settings.write_text(settings_toml(proxy.address, http_port, options, spec.prefix))
                churn = Churn(scenario, scenario_plan, spec.seed)
                async with (
                    aiohttp.ClientSession() as session,
                    exporter_child(settings, work / "loop-lag.jsonl", None) as run,
                ):
                    rows = scenario_plan.truth()["rows"]
                    await time_to_complete_metrics(
                        session, f"http://127.0.0.1:{http_port}", run, rows, within=120
                    )
                    for target in range(churn_every, cycles + 1, churn_every):
                        await run.wait_cycles(target, within=churn_every * poll_interval + 120)
                        async with asyncio.timeout(CHURN_STEP_TIMEOUT):
                            await churn.step()
                        if target % 100 == 0:
                            last = run.cycles[-1]
                            log(
                                f"soak cycle {last.cycle}: rss {last.rss_bytes / 2**20:.1f} MB,"
                                f" fds {last.open_fds}, groups {last.groups}"
                            )
                    await run.wait_cycles(cycles, within=poll_interval * 5 + 60)
                    observed = list(run.cycles[:cycles])
                    problems = dict(run.problems)
                lag = read_loop_lag(work / "loop-lag.jsonl")
    result["churn"] = churn.counts
    result["exporter_warnings"] = problems
    result["event_loop_lag_max_seconds"] = max((w["max"] for w in lag), default=None)
    result["summary"] = summarise_soak(observed)
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    result["load_average_after"] = load_average()
    log(json.dumps({k: v for k, v in result["summary"].items() if k != "series"}))
    return result
