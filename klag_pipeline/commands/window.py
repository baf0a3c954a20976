"""``--window DURATION`` of ``once`` and ``status``: several cycles through the evaluation stage.

The decisions (documented in docs/health.md, "Command line"):

- **Cycles.** The run is cut into ``n = max(2, ceil(window / poll_interval))`` equal intervals and
  a cycle starts at each end: ``n + 1`` cycles (at least three: rates need two observations, the
  LAGGING trend a third), never further apart than ``poll_interval``. A cycle slower than the
  interval delays the next one; once ``window`` has passed the run ends after the cycle in
  progress (with at least two done).
- **Evaluation window.** The whole run is the window: ``[exporter.health] window`` is replaced by
  ``window`` plus one interval, the slack that keeps the first cycle's observation in the window at
  the last cycle whatever the cycles' own durations. The evaluator's sample bound follows the
  interval (``poll_interval`` is replaced by it for this run).
- **Thresholds.** ``stalled_after`` and ``stopped_after`` longer than the run could never be reached
  (a stalled group would stay UNKNOWN), so they are shortened to the run minus one interval: a
  committed offset that did not move during the whole run counts as not moving, whatever the
  cycles' own durations (the first, connecting, is the slowest). Shorter ones are kept.
  ``enabled = false`` does not apply: asking for ``--window`` asks for the evaluation.
- **Chain.** One chain per cluster for the whole run, built long-running (values a cycle could not
  read are carried, as in the exporter), because a row missing from one cycle would otherwise
  erase its history in the evaluator.
- **--timeout** bounds each cycle, not the run: a cluster that does not answer fails as soon as
  one cycle has waited that long.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass
from typing import Final

import structlog

from klag_pipeline.collection import CollectionChain
from klag_pipeline.commands.progress import TrackedClient, no_answer
from klag_pipeline.errors import KlagError
from klag_pipeline.events import CycleStarted
from klag_pipeline.pipeline.clock import TimeSource
from klag_pipeline.settings.schema import ExporterSettings
from klag_pipeline.snapshot import ClusterSnapshot

log = structlog.get_logger("klag_pipeline")

MIN_INTERVALS: Final = 2


@dataclass(frozen=True, slots=True)
class Plan:
    """How a ``--window`` run is cut into cycles."""

    window: float
    cycles: int
    interval: float

    @classmethod
    def of(cls, window: float, poll_interval: float) -> Plan:
        intervals = max(MIN_INTERVALS, math.ceil(window / poll_interval))
        return cls(window, intervals + 1, window / intervals)

    def exporter(self, exporter: ExporterSettings) -> ExporterSettings:
        """``exporter`` with the health settings of this run (see the module docstring)."""
        health = exporter.health
        longest = self.window - self.interval
        return dataclasses.replace(
            exporter,
            poll_interval=self.interval,
            health=dataclasses.replace(
                health,
                enabled=True,
                window=self.window + self.interval,
                stalled_after=min(health.stalled_after, longest),
                stopped_after=min(health.stopped_after, longest),
            ),
        )


class CycleTimeout(KlagError):
    """A cycle of a ``--window`` run that did not finish within ``--timeout``."""

    def __init__(self, message: str, *, broker: str | None) -> None:
        self.broker = broker
        super().__init__(message)


async def run_cycles(
    chain: CollectionChain,
    cluster: str,
    client: TrackedClient,
    plan: Plan,
    clock: TimeSource,
    *,
    cycle_timeout: float,
    command: str,
) -> ClusterSnapshot:
    """Run ``chain`` on ``plan``'s schedule; the last snapshot (with its health)."""
    started = clock.monotonic()
    snapshot: ClusterSnapshot | None = None
    for index in range(plan.cycles):
        delay = started + index * plan.interval - clock.monotonic()
        if delay > 0:
            client.rest(f"waiting for cycle {index + 1} of {plan.cycles}")
            await asyncio.sleep(delay)
        cycle_started = clock.monotonic()
        try:
            async with asyncio.timeout(cycle_timeout):
                snapshot = await chain.process(
                    CycleStarted(cluster, index + 1, clock.time(), clock.monotonic())
                )
        except TimeoutError:
            brokers = client.waiting_on()
            raise CycleTimeout(
                f"{no_answer(brokers, cycle_timeout)} in cycle {index + 1} of {plan.cycles}",
                broker=", ".join(brokers) or None,
            ) from None
        log.info(
            "cycle_done",
            command=command,
            cluster=cluster,
            cycle=index + 1,
            cycles=plan.cycles,
            seconds=round(clock.monotonic() - cycle_started, 2),
        )
        if index >= 1 and clock.monotonic() - started >= plan.window:
            break
    assert snapshot is not None  # plan.cycles >= 3
    return snapshot
