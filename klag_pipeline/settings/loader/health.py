"""``[exporter.health]``: the evaluation stage's window and thresholds (docs/health.md)."""

from __future__ import annotations

from klag_pipeline.settings.durations import format_duration
from klag_pipeline.settings.loader.ranges import seconds_setting
from klag_pipeline.settings.loader.sections import Section, boolean
from klag_pipeline.settings.schema import HealthSettings


def health_settings(s: Section, poll_interval: float) -> HealthSettings:
    d = HealthSettings()

    result = HealthSettings(
        enabled=s.get("enabled", d.enabled, boolean),
        window=seconds_setting(s, "window", d.window),
        stalled_after=seconds_setting(s, "stalled_after", d.stalled_after),
        stopped_after=seconds_setting(s, "stopped_after", d.stopped_after),
        abandoned_after=seconds_setting(s, "abandoned_after", d.abandoned_after),
        drop_abandoned=s.get("drop_abandoned", d.drop_abandoned, boolean),
        max_lag_seconds=seconds_setting(s, "max_lag_seconds", d.max_lag_seconds),
        max_catch_up_seconds=seconds_setting(s, "max_catch_up_seconds", d.max_catch_up_seconds),
    )
    if result.enabled and result.window < 2 * poll_interval:
        # Rates need two observations inside the window; with less, every status is UNKNOWN.
        s.problem(
            "window",
            f"must be at least twice poll_interval ({format_duration(2 * poll_interval)}) so it "
            "holds two observations",
        )
    s.finish()
    return result
