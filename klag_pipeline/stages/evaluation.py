"""Evaluation: rates, catch-up time and status from the history of this cluster's snapshots.

Runs after the calculation (``ClusterSnapshot`` → ``ClusterSnapshot`` with ``health``), off the
event loop like it: the rules are pure Python over every row. No Kafka request of its own.
"""

from __future__ import annotations

import asyncio

from klag_pipeline.health.evaluator import Evaluator
from klag_pipeline.settings.schema import HealthSettings, TimestampSamplingSettings
from klag_pipeline.snapshot import ClusterSnapshot


class EvaluationStage:
    name = "evaluation"

    def __init__(
        self,
        settings: HealthSettings,
        poll_interval: float,
        sampling: TimestampSamplingSettings | None = None,
    ) -> None:
        # ``sampling`` decides the estimated time lag (rate mode, denied topics); None: the
        # defaults (message mode: estimates only for topics whose Fetch is denied).
        self._evaluator = Evaluator(settings, poll_interval, sampling)

    async def process(self, event: ClusterSnapshot) -> ClusterSnapshot:
        return await asyncio.to_thread(self._evaluator.evaluate, event)
