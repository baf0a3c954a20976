"""``python -m bench evaluation`` — the consumer-health evaluation's own cost (issue 14).

No broker: snapshots shaped like a preset (``bench.scenario.plan``: for ``large`` 2,000 groups,
20,000 rows over 1,000 partitions, 14,000 of them lagging) are built in memory and fed, cycle
after cycle, to :class:`klag_pipeline.health.evaluator.Evaluator` with the default
``[exporter.health]`` settings and the preset's bench poll interval, exactly as the evaluation
stage does. Each cycle, active topics grow, lagging groups commit a little less than was
produced (their lag drifts), caught-up groups commit at the end, idle-topic groups do not move,
and the live groups keep their one member. ``observed_at`` advances by the poll interval.

Two passes over the same snapshots: the first times ``evaluate`` (``time.process_time``, CPU
seconds of this process; tracemalloc off), the second runs under tracemalloc and reports, once
the window is full, what the evaluator holds — the memory traced after the last cycle (its
result released) minus after the evaluator is dropped — and what one cycle's result holds until
the next (the health attached to the snapshot: ``PartitionHealth`` and ``Rates`` per row, keys,
group-topic and group results), plus the peak during one evaluation. After the first pass, what
the evaluator and its last result add to the pause of a full ``gc.collect()`` (median of 7 with
them, less median of 7 without). In the second pass the snapshots are built one at a time under
tracemalloc and dropped after their cycle, as in the exporter, so the int objects a history keeps
from snapshots gone by count as the evaluator's.
Results go to ``bench/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, load_average, machine_info
from bench.scenario import ScenarioPlan, plan, preset
from klag_pipeline.health.evaluator import Evaluator
from klag_pipeline.model import GroupState
from klag_pipeline.settings.schema import HealthSettings
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionOffsets, PartitionRow

PRODUCED_PER_CYCLE = 20
"""Records a partition of an active topic gains per cycle (2/s at the large preset's 10 s)."""


def _snapshots(scenario: ScenarioPlan, poll: float, cycles: int, seed: int) -> Iterator[Any]:
    """``cycles`` snapshots of ``scenario``'s shape (deterministic for a seed)."""
    rng = random.Random(seed)
    spec = scenario.spec
    high = {(t.name, p): scenario.high for t in scenario.topics for p in range(spec.partitions)}
    commits = {g.group_id: dict(g.commits) for g in scenario.groups}
    start = time.time()
    for cycle in range(cycles):
        at = start + cycle * poll
        if cycle:
            for t in scenario.topics:
                if not t.idle:
                    for p in range(spec.partitions):
                        high[(t.name, p)] += PRODUCED_PER_CYCLE
            for g in scenario.groups:
                offsets = commits[g.group_id]
                for tp in offsets:
                    if g.kind == "caught_up":
                        offsets[tp] = high[tp]
                    elif g.kind in ("lagging", "live"):
                        # A little slower than production on average: lag drifts up slowly.
                        step = rng.randint(PRODUCED_PER_CYCLE - 6, PRODUCED_PER_CYCLE + 2)
                        offsets[tp] = min(high[tp], offsets[tp] + step)
        rows: list[PartitionRow] = []
        groups: list[GroupSummary] = []
        for g in scenario.groups:
            live = g.kind == "live"
            lags: dict[str, int] = {}
            for (topic, p), committed in sorted(commits[g.group_id].items()):
                lag = high[(topic, p)] - committed
                lags[topic] = lags.get(topic, 0) + lag
                rows.append(
                    PartitionRow(
                        group=g.group_id,
                        topic=topic,
                        partition=p,
                        member_host="/10.0.0.1" if live else "",
                        consumer_id=f"{g.group_id}-member" if live else "",
                        client_id="bench" if live else "",
                        committed=committed,
                        low=0,
                        high=high[(topic, p)],
                        lag=lag,
                        lag_seconds=None,
                        compaction_detected=False,
                        data_loss_detected=False,
                        messages_lost=0,
                        retention_margin=committed,
                        lag_retention_ratio=None,
                    )
                )
            group_rows = rows[-len(commits[g.group_id]) :]
            groups.append(
                GroupSummary(
                    group=g.group_id,
                    state=GroupState.STABLE if live else GroupState.EMPTY,
                    protocol_type="consumer",
                    group_type="classic",
                    member_count=1 if live else 0,
                    max_lag=max(r.lag for r in group_rows),
                    max_lag_seconds=None,
                    sum_lag=sum(lags.values()),
                    topic_sum_lag=lags,
                )
            )
        yield ClusterSnapshot(
            cluster="bench",
            labels={},
            cycle=cycle,
            observed_at=at,
            started_at=at - 1.0,
            duration_seconds=1.0,
            poll_time_ms=900.0,
            timestamp_sampling=False,
            partitions=tuple(PartitionOffsets(t, p, 0, h) for (t, p), h in high.items()),
            groups=tuple(groups),
            rows=tuple(rows),
            compaction_detected_count=0,
            data_loss_partition_count=0,
            error_count=0,
        )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _full_collection() -> float:
    """Median seconds of a full ``gc.collect()``, over 7."""
    times = []
    for _ in range(7):
        before = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - before)
    return statistics.median(times)


def main(args: argparse.Namespace) -> int:
    from bench.__main__ import DEFAULT_POLL_SECONDS

    load_before = load_average()
    spec = preset(args.preset)
    scenario = plan(spec, int(time.time() * 1000))
    poll = DEFAULT_POLL_SECONDS[args.preset]
    settings = HealthSettings()
    snapshots = list(_snapshots(scenario, poll, args.cycles, spec.seed))
    truth = scenario.truth()
    window_full = min(args.cycles, int(settings.window / poll) + 1)

    # Pass 1: CPU per cycle, tracemalloc off (it would slow every allocation).
    evaluator = Evaluator(settings, poll)
    cpu: list[float] = []
    statuses: dict[str, int] = {}
    for snapshot in snapshots:
        gc.collect()
        before = time.process_time()
        result = evaluator.evaluate(snapshot)
        cpu.append(time.process_time() - before)
    assert result.health is not None
    for health in result.health.partitions.values():
        statuses[health.status.name] = statuses.get(health.status.name, 0) + 1
    # A full collection's pause (it holds the GIL: in the exporter, a stall of the event loop)
    # with the filled evaluator and its last result alive, less that without them (the
    # snapshots kept here are traversed in both).
    with_evaluator = _full_collection()
    del evaluator, result
    gc_share = with_evaluator - _full_collection()

    # Pass 2: what the evaluator and one cycle's result hold, and the peak of one evaluation,
    # under tracemalloc; each snapshot is built under it and dropped after its cycle.
    gc.collect()
    tracemalloc.start()
    evaluator = Evaluator(settings, poll)
    peaks: list[int] = []
    for snapshot in _snapshots(scenario, poll, args.cycles, spec.seed):
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = evaluator.evaluate(snapshot)
        peaks.append(tracemalloc.get_traced_memory()[1] - held)
        if snapshot.cycle < args.cycles - 1:
            del result
    gc.collect()
    with_result, _ = tracemalloc.get_traced_memory()
    del result
    gc.collect()
    without_result, _ = tracemalloc.get_traced_memory()
    del evaluator
    gc.collect()
    without_evaluator, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    state = without_result - without_evaluator
    result_held = with_result - without_result

    steady = cpu[window_full:] or cpu
    output = {
        "command": f"python -m bench evaluation --preset {args.preset} --cycles {args.cycles}",
        "preset": args.preset,
        "shape": {
            "groups": truth["groups_with_commits"],
            "rows": truth["rows"],
            "partitions": truth["partitions"],
            "lagging_rows_at_start": truth["lagging_rows"],
            "live_groups": spec.live_groups,
        },
        "poll_interval_seconds": poll,
        "health_settings": {"window": settings.window, "stalled_after": settings.stalled_after},
        "cycles": args.cycles,
        "cycles_before_window_full": window_full,
        "cpu_seconds_per_cycle": {
            "all": {"median": statistics.median(cpu), "p90": _percentile(cpu, 0.9)},
            "window_full": {"median": statistics.median(steady), "p90": _percentile(steady, 0.9)},
            "first": cpu[0],
            "max": max(cpu),
        },
        "memory_bytes": {
            "evaluator_state_after_last_cycle": state,
            "evaluator_state_per_row": round(state / truth["rows"]),
            "last_result_held": result_held,
            "evaluation_peak_max": max(peaks),
        },
        "full_gc_collection_seconds": {"added_by_evaluator_and_result": gc_share},
        "last_cycle_partition_statuses": statuses,
        "machine": machine_info()
        | {"load_average_before": load_before, "load_average_after": load_average()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path: Path = RESULTS / "evaluation.json"
    path.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps({k: output[k] for k in ("cpu_seconds_per_cycle", "memory_bytes")}, indent=2))
    print(f"wrote {path}")
    return 0
