"""The accepted range of every duration and count setting (docs/configuration.md lists them).

One table, keyed by dotted path, so the loader, the documentation and its test cannot drift
apart. Bounds are inclusive. The lower bounds keep a typo (``1ms`` for ``1m``) from turning into
hundreds of failed cycles a second; the upper bounds keep an absurd value (``1e11`` concurrent
fetches, a poll interval of centuries) from being accepted and failing later, far from the
setting. Loopback tests use sub-second timings, so timeouts and intervals reach down to 100 ms.
"""

from __future__ import annotations

from typing import Final

from klag_pipeline.settings.loader.sections import Section, duration, integer

_MINUTE: Final = 60.0
_HOUR: Final = 3600.0
_DAY: Final = 86400.0
_KIB: Final = 1024
_MIB: Final = 1024 * _KIB
_TIB: Final = 1024 * 1024 * _MIB

DURATIONS: Final[dict[str, tuple[float, float]]] = {
    "exporter.poll_interval": (0.1, _DAY),
    # Also at least poll_interval (checked by the loader).
    "exporter.staleness_threshold": (0.1, 7 * _DAY),
    # 0s: no caching.
    "exporter.timestamp_sampling.cache_ttl": (0.0, _DAY),
    "exporter.timestamp_sampling.fetch_timeout": (0.1, 5 * _MINUTE),
    # The oldest time lag the estimate can report (older is unknown, never extrapolated).
    "exporter.timestamp_sampling.rate_history_max_age": (1.0, 30 * _DAY),
    "exporter.otel.export_interval": (1.0, _DAY),
    "exporter.otel.timeout": (0.1, 10 * _MINUTE),
    "exporter.performance.kafka_timeout": (0.1, 10 * _MINUTE),
    "exporter.performance.offset_fetch_timeout": (0.1, 10 * _MINUTE),
    # Kubernetes stores whole seconds; also lease_duration > renew_deadline > retry_period.
    "exporter.leadership.lease_duration": (1.0, _HOUR),
    "exporter.leadership.renew_deadline": (0.1, _HOUR),
    "exporter.leadership.retry_period": (0.1, 10 * _MINUTE),
    # The broker's group.min/max.session.timeout.ms bound it too (6 s to 30 min by default).
    "exporter.sharding.session_timeout": (1.0, 30 * _MINUTE),
    # Also at most half the session timeout (checked by the loader).
    "exporter.sharding.heartbeat_interval": (0.1, 10 * _MINUTE),
    # Also at least 2 × poll_interval (checked by the loader).
    "exporter.health.window": (0.2, _DAY),
    "exporter.health.stalled_after": (0.1, 7 * _DAY),
    "exporter.health.stopped_after": (0.1, 7 * _DAY),
    "exporter.health.abandoned_after": (0.1, 30 * _DAY),
    # 0s: no threshold.
    "exporter.health.max_lag_seconds": (0.0, 30 * _DAY),
    "exporter.health.max_catch_up_seconds": (0.0, 30 * _DAY),
}

COUNTS: Final[dict[str, tuple[int, int]]] = {
    "exporter.http_port": (1, 65535),
    "exporter.timestamp_sampling.max_concurrent_fetches": (1, 1000),
    "exporter.timestamp_sampling.max_bytes_per_partition": (_KIB, 64 * _MIB),
    # Two points to interpolate between; 16 bytes a point per partition (health/estimate.py).
    "exporter.timestamp_sampling.rate_history_samples": (2, 10000),
    # 0: never rotate; otherwise at least 1 KiB (checked by the loader).
    "exporter.jsonl.rotate_bytes": (0, _TIB),
    "exporter.jsonl.keep_files": (0, 1000),
    "exporter.performance.max_concurrent_groups": (1, 1000),
    "exporter.performance.max_concurrent_watermarks": (1, 1000),
    "exporter.performance.queue_capacity": (1, 10000),
    # Per configured cluster; more buckets than replicas × a few gains nothing.
    "exporter.sharding.buckets": (1, 4096),
}

MIN_ROTATE_BYTES: Final = _KIB


def seconds_setting(s: Section, key: str, default: float) -> float:
    """The duration ``key`` of section ``s``, checked against its range in :data:`DURATIONS`."""
    return s.get(key, default, duration(*DURATIONS[s.at(key)]))


def count_setting(s: Section, key: str, default: int) -> int:
    """The count ``key`` of section ``s``, checked against its range in :data:`COUNTS`."""
    return s.get(key, default, integer(*COUNTS[s.at(key)]))
