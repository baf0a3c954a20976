"""``[exporter.sharding]``: the sharding group and its timing (docs/scaling.md)."""

from __future__ import annotations

from klag_pipeline.settings.durations import format_duration
from klag_pipeline.settings.loader.ranges import count_setting, seconds_setting
from klag_pipeline.settings.loader.sections import (
    Section,
    boolean,
    optional_printable,
    optional_string,
    printable,
)
from klag_pipeline.settings.schema import ShardingSettings


def sharding_settings(s: Section) -> ShardingSettings:
    d = ShardingSettings()
    result = ShardingSettings(
        enabled=s.get("enabled", d.enabled, boolean),
        cluster=s.get("cluster", d.cluster, optional_string),
        group_id=s.get("group_id", d.group_id, printable),
        buckets=count_setting(s, "buckets", d.buckets),
        session_timeout=seconds_setting(s, "session_timeout", d.session_timeout),
        heartbeat_interval=seconds_setting(s, "heartbeat_interval", d.heartbeat_interval),
        identity=s.get("identity", d.identity, optional_printable),
    )
    if result.heartbeat_interval * 2 > result.session_timeout:
        # Kafka's own rule is "less than"; half leaves room for one lost heartbeat.
        s.problem(
            "heartbeat_interval",
            f"must be at most half of session_timeout ({format_duration(result.session_timeout)})"
            f", got {format_duration(result.heartbeat_interval)}",
        )
    s.finish()
    return result
