"""Settings: schema (frozen dataclasses), loader (dynaconf + ${VAR}), redaction."""

from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    HttpSettings,
    JsonlSettings,
    LeadershipSettings,
    OtelSettings,
    PerformanceSettings,
    Settings,
    TimestampSamplingSettings,
)

__all__ = [
    "ClusterSettings",
    "ExporterSettings",
    "HttpSettings",
    "JsonlSettings",
    "LeadershipSettings",
    "OtelSettings",
    "PerformanceSettings",
    "Settings",
    "TimestampSamplingSettings",
]
