"""Frozen, typed settings (SPEC §2.2). Durations are float seconds.

Parsed once at start-up by :mod:`klag_pipeline.settings.loader` and passed down; nothing reads
configuration lazily.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Granularity = Literal["partition", "topic"]
OtelProtocol = Literal["grpc", "http/protobuf"]
LeadershipProvider = Literal["kubernetes", "kafka"]
SamplingMode = Literal["message", "rate"]


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TimestampSamplingSettings:
    enabled: bool = True
    # "message": read the record at the committed offset (exact time lag); "rate": no Fetch,
    # time lag estimated from the high-watermark history (docs/time-lag.md).
    mode: SamplingMode = "message"
    rate_history_samples: int = 60  # (time, high) points kept per partition for the estimate
    rate_history_max_age: float = 3600.0  # points older than this are dropped
    cache_ttl: float = 60.0
    max_concurrent_fetches: int = 10
    fetch_timeout: float = 5.0
    max_bytes_per_partition: int = 262144


@dataclass(frozen=True, slots=True)
class OtelSettings:
    enabled: bool = False
    endpoint: str = "http://localhost:4317"
    protocol: OtelProtocol = "grpc"
    export_interval: float = 60.0
    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=_empty)
    resource_attributes: Mapping[str, str] = field(default_factory=_empty)
    insecure: bool | None = None  # None: derived from the endpoint scheme (http → insecure)
    certificate_file: str | None = None
    client_certificate_file: str | None = None
    client_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class JsonlSettings:
    enabled: bool = False
    path: str = "-"
    only_lagging: bool = False
    rotate_bytes: int = 0
    keep_files: int = 5


@dataclass(frozen=True, slots=True)
class HttpSettings:
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=_empty)  # user → hash (secret)


@dataclass(frozen=True, slots=True)
class PerformanceSettings:
    kafka_timeout: float = 30.0
    offset_fetch_timeout: float = 10.0
    max_concurrent_groups: int = 10
    max_concurrent_watermarks: int = 50
    queue_capacity: int = 64


@dataclass(frozen=True, slots=True)
class LeadershipSettings:
    enabled: bool = False
    provider: LeadershipProvider = "kubernetes"
    lease_name: str = "klag-pipeline"
    lease_namespace: str | None = None  # None: the pod's namespace, else "default"
    identity: str | None = None  # None: HOSTNAME / POD_NAME / random
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    cluster: str | None = None  # kafka provider: which cluster; None = the first
    kubeconfig: str | None = None


@dataclass(frozen=True, slots=True)
class ShardingSettings:
    """``[exporter.sharding]``: replicas share the work through a Kafka group (docs/scaling.md)."""

    enabled: bool = False
    cluster: str | None = None  # whose group coordinator coordinates; None = the first
    group_id: str = "klag-pipeline-shards"
    buckets: int = 64  # work units per configured cluster
    session_timeout: float = 15.0  # a replica killed without a word loses its buckets after it
    heartbeat_interval: float = 3.0  # also how soon a member notices a rebalance
    identity: str | None = None  # None: POD_NAME / HOSTNAME / random (logs and the API only)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """``[exporter.health]``: the evaluation stage (docs/health.md)."""

    enabled: bool = True
    window: float = 300.0  # rates and trends over this many seconds of observations
    stalled_after: float = 300.0  # members present, lag > 0, commit unmoved this long: STALLED
    stopped_after: float = 300.0  # no members, lag > 0, commit unmoved this long: STOPPED
    abandoned_after: float = 600.0  # members on other topics only, commit unmoved this long
    drop_abandoned: bool = False  # leave abandoned group-topics out of the lag families
    max_lag_seconds: float = 0.0  # group LAGGING above this time lag; 0: no threshold
    max_catch_up_seconds: float = 0.0  # group LAGGING above this catch-up time; 0: none


@dataclass(frozen=True, slots=True)
class ExporterSettings:
    poll_interval: float = 30.0
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    granularity: Granularity = "partition"
    staleness_threshold: float = 90.0  # default 3 × poll_interval, resolved by the loader
    log_summary_interval: float = 300.0  # 0: no cluster_summary log lines
    timestamp_sampling: TimestampSamplingSettings = field(default_factory=TimestampSamplingSettings)
    otel: OtelSettings = field(default_factory=OtelSettings)
    jsonl: JsonlSettings = field(default_factory=JsonlSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    performance: PerformanceSettings = field(default_factory=PerformanceSettings)
    leadership: LeadershipSettings = field(default_factory=LeadershipSettings)
    sharding: ShardingSettings = field(default_factory=ShardingSettings)
    health: HealthSettings = field(default_factory=HealthSettings)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    name: str
    bootstrap_servers: tuple[str, ...]
    group_whitelist: tuple[re.Pattern[str], ...] = (re.compile(".*"),)
    group_blacklist: tuple[re.Pattern[str], ...] = ()
    topic_whitelist: tuple[re.Pattern[str], ...] = (re.compile(".*"),)
    topic_blacklist: tuple[re.Pattern[str], ...] = (re.compile("__.*"),)
    consumer_properties: Mapping[str, str] = field(default_factory=_empty)
    labels: Mapping[str, str] = field(default_factory=_empty)

    def keeps_group(self, group_id: str) -> bool:
        return _kept(group_id, self.group_whitelist, self.group_blacklist)

    def keeps_topic(self, topic: str) -> bool:
        return _kept(topic, self.topic_whitelist, self.topic_blacklist)


def _kept(
    name: str, whitelist: tuple[re.Pattern[str], ...], blacklist: tuple[re.Pattern[str], ...]
) -> bool:
    return any(p.search(name) for p in whitelist) and not any(p.search(name) for p in blacklist)


@dataclass(frozen=True, slots=True)
class Settings:
    exporter: ExporterSettings
    clusters: tuple[ClusterSettings, ...]
    source: str | None = None  # path of the file these came from, for messages
