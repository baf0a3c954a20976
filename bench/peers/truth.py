"""What the scenario says each exporter should report, and how far a scrape is from it.

The scenario (bench/scenario.py) is static during a compare run: every partition holds offsets
[0, high) with record ``o`` timestamped ``TopicPlan.timestamp(o)``, and every group's commits
stay where setup put them. So the offset lag of a row is ``high − committed`` and its time lag
at wall-clock time T is ``T − timestamp(committed)`` (the age of the next record to consume),
0 when caught up. An exporter computes time lag at its own cycle's "now", which precedes the
scrape by up to one poll interval (plus the cycle's own duration): ``TIME_SLACK`` covers that.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.peers.exposition import Key
from bench.scenario import ScenarioPlan

TIME_SLACK_SECONDS = 2.0
"""Beyond one poll interval before the scrape, and after it (clock reading, rounding)."""


def expected_rows(plan: ScenarioPlan) -> dict[Key, int]:
    """(group, topic, partition) → committed offset, for every row with a commit."""
    return {
        (group.group_id, topic, partition): offset
        for group in plan.groups
        for (topic, partition), offset in group.commits.items()
    }


def offset_lag_accuracy(plan: ScenarioPlan, reported: dict[Key, float]) -> dict[str, int]:
    rows = expected_rows(plan)
    present = [key for key in rows if key in reported]
    exact = sum(1 for key in present if reported[key] == plan.high - rows[key])
    return {
        "expected": len(rows),
        "present": len(present),
        "exact": exact,
        "unexpected": sum(1 for key in reported if key not in rows),
    }


def expected_time_lag(plan: ScenarioPlan, key: Key, committed: int, at_unix: float) -> float:
    if committed >= plan.high:
        return 0.0
    timestamp_ms = plan.topic_index[key[1]].timestamp(committed)
    return at_unix - timestamp_ms / 1000


def time_lag_accuracy(
    plan: ScenarioPlan,
    reported: dict[Key, float] | None,
    scraped_at_unix: float,
    poll_interval: float,
) -> dict[str, Any] | None:
    """Error = reported − truth at the scrape's time; within when
    −(poll + slack) ≤ error ≤ slack. None when the exporter has no time lag at all."""
    if reported is None:
        return None
    rows = expected_rows(plan)
    lagging = {k: c for k, c in rows.items() if c < plan.high}
    errors: list[float] = []
    within = 0
    for key, committed in lagging.items():
        if key not in reported:
            continue
        error = reported[key] - expected_time_lag(plan, key, committed, scraped_at_unix)
        errors.append(error)
        if -(poll_interval + TIME_SLACK_SECONDS) <= error <= TIME_SLACK_SECONDS:
            within += 1
    caught_up = [k for k, c in rows.items() if c >= plan.high]
    return {
        "lagging_rows": len(lagging),
        "present": len(errors),
        "within_window": within,
        "error_seconds_median": round(statistics.median(errors), 3) if errors else None,
        "error_seconds_max_abs": round(max(abs(e) for e in errors), 3) if errors else None,
        "caught_up_rows": len(caught_up),
        "caught_up_zero": sum(1 for k in caught_up if reported.get(k) == 0.0),
    }
