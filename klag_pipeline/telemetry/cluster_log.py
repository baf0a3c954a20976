"""What the logs say about each cluster while the exporter runs.

An operator reading the logs during an outage wants the transitions, not a line per failed cycle:
one ``cluster_cycle_failed`` warning when a cluster goes down (with the stage, broker and error),
one ``cluster_recovered`` when a cycle succeeds again (with how long it was down and how many
cycles failed), and in between the failures are counted (``klag_pipeline_cycles_total`` and the
summary) and logged only at debug. A ``cluster_summary`` line per cluster every
``exporter.log_summary_interval`` says what a healthy exporter is doing. docs/logs.md lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from klag_pipeline.errors import KlagError
from klag_pipeline.snapshot import ClusterSnapshot, denied_topics

log = structlog.get_logger("klag_pipeline")


@dataclass
class _Counts:
    ok: int = 0
    failed: int = 0
    partial_errors: int = 0


class ClusterLog:
    """One cluster's up/down state as the logs tell it, and the counts for its summary."""

    def __init__(self, cluster: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self._monotonic = monotonic
        self._down_since: float | None = None
        self._failed_while_down = 0
        # The failure that started (or last changed) the outage: the staleness warning and the
        # summary repeat it.
        self.last_error = ""
        self._groups: int | None = None
        self._rows: int | None = None
        self._last_cycle_seconds: float | None = None
        self._last_success: float | None = None
        self._counts = _Counts()
        self._denied: frozenset[str] = frozenset()

    @property
    def failing(self) -> bool:
        return self._down_since is not None

    def cycle_failed(self, cycle: int, stage: str, error: KlagError, *, restated: bool) -> None:
        """``restated``: a back-off restating the failure that started it (not a new cause)."""
        self._counts.failed += 1
        if self._down_since is None:
            self._down_since = self._monotonic()
            self._failed_while_down = 0
            log.warning(
                "cluster_cycle_failed",
                cluster=self.cluster,
                cycle=cycle,
                stage=stage,
                error=str(error),
                broker=getattr(error, "broker", None),
            )
        else:
            log.debug(
                "cluster_cycle_failed", cluster=self.cluster, cycle=cycle, stage=stage, error=error
            )
        self._failed_while_down += 1
        if not restated:
            self.last_error = f"{stage}: {error}"

    def cycle_succeeded(self, snapshot: ClusterSnapshot) -> None:
        self._counts.ok += 1
        self._counts.partial_errors += snapshot.error_count
        self._groups = len(snapshot.groups)
        self._rows = len(snapshot.rows)
        self._last_cycle_seconds = snapshot.duration_seconds
        self._last_success = self._monotonic()
        self._time_lag_denied(snapshot)
        if self._down_since is not None:
            log.info(
                "cluster_recovered",
                cluster=self.cluster,
                cycle=snapshot.cycle,
                down_seconds=round(self._last_success - self._down_since, 1),
                failed_cycles=self._failed_while_down,
            )
            self._down_since = None
            self.last_error = ""

    def _time_lag_denied(self, snapshot: ClusterSnapshot) -> None:
        """One warning when topics' Fetch starts being refused (no Read ACL), one info line when
        a lagging row of such a topic has an exact time lag again (Read granted); not a line per
        cycle. A topic without lagging rows is not read at all, so it proves nothing either way."""
        if not self._denied and not snapshot.time_lag_denied:
            return  # the usual cycle: no walk over the rows
        fresh = snapshot.time_lag_denied - self._denied
        if fresh:
            log.warning(
                "time_lag_denied",
                cluster=self.cluster,
                cycle=snapshot.cycle,
                topics=sorted(fresh),
                reason="Fetch answered TOPIC_AUTHORIZATION_FAILED: no Read ACL on these topics, "
                "so their time lag is not read; offset lag stays exact (grant Read for time lag)",
            )
        still, readable = denied_topics(self._denied, snapshot)
        allowed = self._denied & readable
        if allowed:
            log.info(
                "time_lag_allowed",
                cluster=self.cluster,
                cycle=snapshot.cycle,
                topics=sorted(allowed),
            )
        self._denied = still

    def summarize(self) -> None:
        """Log the ``cluster_summary`` line and start counting afresh."""
        counts, self._counts = self._counts, _Counts()
        now = self._monotonic()
        fields: dict[str, object] = {
            "state": "down" if self.failing else ("up" if self._last_success else "starting"),
            "groups": self._groups,
            "rows": self._rows,
            "last_cycle_seconds": _rounded(self._last_cycle_seconds, 3),
            "last_success_seconds_ago": _rounded(
                None if self._last_success is None else now - self._last_success, 1
            ),
            "cycles_ok": counts.ok,
            "cycles_failed": counts.failed,
            "partial_errors": counts.partial_errors,
        }
        if self._down_since is not None:
            fields["down_seconds"] = round(now - self._down_since, 1)
            fields["error"] = self.last_error
        log.info("cluster_summary", cluster=self.cluster, **fields)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def log_summaries(logs: Sequence[ClusterLog], interval: float, stop: asyncio.Event) -> None:
    """Every ``interval`` seconds until ``stop``, one ``cluster_summary`` per cluster (a runner
    task; started only when the interval is not 0)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        for cluster_log in logs:
            cluster_log.summarize()
