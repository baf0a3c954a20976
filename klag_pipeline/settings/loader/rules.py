"""The schema of SPEC §2.2: every key, default and validation, table by table."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any, Final, get_args

from klag_pipeline.settings.durations import format_duration
from klag_pipeline.settings.loader.health import health_settings
from klag_pipeline.settings.loader.leadership import leadership_settings
from klag_pipeline.settings.loader.ranges import MIN_ROTATE_BYTES, count_setting, seconds_setting
from klag_pipeline.settings.loader.sections import (
    Context,
    Invalid,
    Missing,
    Section,
    boolean,
    bootstrap_servers,
    choice,
    control_character,
    duration,
    host,
    join_path,
    optional_printable,
    port,
    printable,
    url,
)
from klag_pipeline.settings.loader.sharding import sharding_settings
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    Granularity,
    HttpSettings,
    JsonlSettings,
    OtelProtocol,
    OtelSettings,
    PerformanceSettings,
    SamplingMode,
    Settings,
    TimestampSamplingSettings,
)

BUILTIN_LABELS: Final = frozenset(
    {
        "cluster_name",
        "topic",
        "partition",
        "group",
        "member_host",
        "consumer_id",
        "client_id",
        "compaction_detected",
        "data_loss_detected",
    }
)
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_BCRYPT = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}")
_SHA256 = re.compile(r"(sha256:)?[0-9a-fA-F]{64}")
_PROPERTY_CHOICES: Final = {
    "security.protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl.mechanism": ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"),
    "sasl.mechanisms": ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"),
    "isolation.level": ("read_uncommitted", "read_committed"),
}

_PATH_PROPERTIES: Final = frozenset(
    {
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "sasl.kerberos.keytab",
        "sasl.oauthbearer.token.endpoint.url",
    }
)

_IGNORED = "has no effect in klag-pipeline and is ignored"
# klag-exporter keys without a meaning here: accepted (its config.toml must load unchanged) with
# one warning each, so nothing configured is ignored silently.
_SAMPLING_COMPAT: Final = {
    # The estimate interpolates between observed high watermarks instead of dividing by a
    # rate, so a rate floor has nothing to act on (docs/time-lag.md).
    "rate_min_msgs_per_sec": f"klag-exporter rate-mode setting {_IGNORED}: the estimate "
    "interpolates the high-watermark history and needs no rate floor",
}
_PERFORMANCE_COMPAT: Final = {
    "client_recycle_interval": f"klag-exporter's librdkafka client recycling {_IGNORED}",
    "max_blocking_threads": f"klag-exporter's Tokio blocking-pool size {_IGNORED}",
    "compacted_topics_cache_ttl": f"klag-exporter cache setting {_IGNORED}",
    "metadata_cache_ttl": f"klag-exporter cache setting {_IGNORED}",
    "consumer_groups_cache_ttl": f"klag-exporter cache setting {_IGNORED}",
}


def convert(tree: dict[str, Any], ctx: Context, source: str) -> Settings:
    """Build :class:`Settings` from the parsed tree; every problem goes to ``ctx``."""
    root = Section(ctx, "", tree)
    exporter = _exporter(root.table("exporter"))
    clusters = _clusters(root, ctx)
    root.finish()
    names = {c.name for c in clusters}
    leader_cluster = exporter.leadership.cluster
    if leader_cluster is not None and leader_cluster not in names:
        ctx.problem("exporter.leadership.cluster", f"no cluster is named {leader_cluster!r}")
    shard_cluster = exporter.sharding.cluster
    if shard_cluster is not None and shard_cluster not in names:
        ctx.problem("exporter.sharding.cluster", f"no cluster is named {shard_cluster!r}")
    return Settings(exporter=exporter, clusters=tuple(clusters), source=source)


def _exporter(s: Section) -> ExporterSettings:
    d = ExporterSettings()
    poll_interval = seconds_setting(s, "poll_interval", d.poll_interval)
    staleness = seconds_setting(s, "staleness_threshold", 3 * poll_interval)
    if "staleness_threshold" in s.data and staleness < poll_interval:
        s.problem(
            "staleness_threshold",
            f"must be at least poll_interval ({format_duration(poll_interval)}), or every "
            "cluster goes stale between two cycles",
        )
    exporter = ExporterSettings(
        poll_interval=poll_interval,
        http_host=s.get("http_host", d.http_host, host),
        http_port=s.get("http_port", d.http_port, port),
        granularity=s.get("granularity", d.granularity, choice(get_args(Granularity))),
        staleness_threshold=staleness,
        log_summary_interval=s.get(
            "log_summary_interval", d.log_summary_interval, _interval_or_off
        ),
        timestamp_sampling=_sampling(s.table("timestamp_sampling", _SAMPLING_COMPAT)),
        otel=_otel(s.table("otel")),
        jsonl=_jsonl(s.table("jsonl")),
        http=_http(s.table("http")),
        performance=_performance(s.table("performance", _PERFORMANCE_COMPAT)),
        leadership=leadership_settings(s.table("leadership")),
        sharding=sharding_settings(s.table("sharding")),
        health=health_settings(s.table("health"), poll_interval),
    )
    sampling = exporter.timestamp_sampling
    if sampling.enabled and sampling.mode == "rate" and not exporter.health.enabled:
        # The estimate is computed by the evaluation stage from its high-watermark history;
        # silently exporting no time lag at all would be the surprise this key exists to end.
        s.ctx.problem(
            "exporter.timestamp_sampling.mode",
            '"rate" estimates time lag in the evaluation stage: it needs [exporter.health] '
            'enabled = true (or use mode = "message")',
        )
    if exporter.sharding.enabled and exporter.leadership.enabled:
        # One replica would both stand by (leadership) and own buckets (sharding): the two
        # answer "who exports what" differently. Sharding keeps every replica busy and covers
        # a lost replica within session_timeout (docs/scaling.md).
        s.ctx.problem(
            "exporter.sharding.enabled",
            "cannot be combined with [exporter.leadership] enabled = true: choose active-passive "
            "(leadership) or sharding (docs/scaling.md)",
        )
    s.finish()
    return exporter


def _interval_or_off(value: object) -> float:
    """``"off"`` or ``"0s"`` → 0 (disabled); otherwise a duration from 1 s to 1 day (a shorter
    summary interval would be the log flood it exists to replace)."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return 0.0
    seconds = duration(0.0, 86400.0)(value)
    if 0 < seconds < 1:
        raise Invalid(f"must be 'off', '0s' or between 1s and 1d, got {value!r}")
    return seconds


def _sampling(s: Section) -> TimestampSamplingSettings:
    d = TimestampSamplingSettings()
    result = TimestampSamplingSettings(
        enabled=s.get("enabled", d.enabled, boolean),
        cache_ttl=seconds_setting(s, "cache_ttl", d.cache_ttl),
        max_concurrent_fetches=count_setting(s, "max_concurrent_fetches", d.max_concurrent_fetches),
        fetch_timeout=seconds_setting(s, "fetch_timeout", d.fetch_timeout),
        max_bytes_per_partition=count_setting(
            s, "max_bytes_per_partition", d.max_bytes_per_partition
        ),
        mode=s.get("mode", d.mode, choice(get_args(SamplingMode))),
        rate_history_samples=count_setting(s, "rate_history_samples", d.rate_history_samples),
        rate_history_max_age=seconds_setting(s, "rate_history_max_age", d.rate_history_max_age),
    )
    s.finish()
    return result


def _otel(s: Section) -> OtelSettings:
    d = OtelSettings()
    insecure = s.get("insecure", None, boolean)
    result = OtelSettings(
        enabled=s.get("enabled", d.enabled, boolean),
        endpoint=s.get("endpoint", d.endpoint, url),
        protocol=s.get("protocol", d.protocol, choice(get_args(OtelProtocol))),
        export_interval=seconds_setting(s, "export_interval", d.export_interval),
        timeout=seconds_setting(s, "timeout", d.timeout),
        headers=MappingProxyType(s.string_map("headers", plain_text=True)),
        resource_attributes=MappingProxyType(s.string_map("resource_attributes", plain_text=True)),
        insecure=insecure,
        certificate_file=s.get("certificate_file", None, optional_printable),
        client_certificate_file=s.get("client_certificate_file", None, optional_printable),
        client_key_file=s.get("client_key_file", None, optional_printable),
    )
    if (result.client_certificate_file is None) != (result.client_key_file is None):
        s.problem("client_key_file", "client_certificate_file and client_key_file go together")
    s.finish()
    return result


def _jsonl(s: Section) -> JsonlSettings:
    d = JsonlSettings()
    result = JsonlSettings(
        enabled=s.get("enabled", d.enabled, boolean),
        path=s.get("path", d.path, printable),
        only_lagging=s.get("only_lagging", d.only_lagging, boolean),
        rotate_bytes=count_setting(s, "rotate_bytes", d.rotate_bytes),
        keep_files=count_setting(s, "keep_files", d.keep_files),
    )
    if 0 < result.rotate_bytes < MIN_ROTATE_BYTES:
        s.problem(
            "rotate_bytes",
            f"must be 0 (never rotate) or at least {MIN_ROTATE_BYTES}, got {result.rotate_bytes}",
        )
    s.finish()
    return result


def _http(s: Section) -> HttpSettings:
    users = s.string_map("basic_auth_users")
    for user, hashed in users.items():
        if ":" in user or control_character(user):
            # RFC 7617: the user-id cannot contain ':' (it ends the user in the credentials).
            s.ctx.problem(
                join_path(s.at("basic_auth_users"), user),
                "a user name must not contain ':' or control characters",
            )
        elif not (_BCRYPT.fullmatch(hashed) or _SHA256.fullmatch(hashed)):
            # The value is deliberately not echoed: it may be a plaintext password by mistake.
            s.ctx.problem(
                join_path(s.at("basic_auth_users"), user),
                "must be a bcrypt hash ($2b$…) or a hex SHA-256 hash, not a plaintext password",
            )
    result = HttpSettings(
        tls_cert_file=s.get("tls_cert_file", None, optional_printable),
        tls_key_file=s.get("tls_key_file", None, optional_printable),
        basic_auth_users=MappingProxyType(users),
    )
    if (result.tls_cert_file is None) != (result.tls_key_file is None):
        s.problem("tls_key_file", "tls_cert_file and tls_key_file go together")
    s.finish()
    return result


def _performance(s: Section) -> PerformanceSettings:
    d = PerformanceSettings()
    result = PerformanceSettings(
        kafka_timeout=seconds_setting(s, "kafka_timeout", d.kafka_timeout),
        offset_fetch_timeout=seconds_setting(s, "offset_fetch_timeout", d.offset_fetch_timeout),
        max_concurrent_groups=count_setting(s, "max_concurrent_groups", d.max_concurrent_groups),
        max_concurrent_watermarks=count_setting(
            s, "max_concurrent_watermarks", d.max_concurrent_watermarks
        ),
        queue_capacity=count_setting(s, "queue_capacity", d.queue_capacity),
    )
    s.finish()
    return result


def _clusters(root: Section, ctx: Context) -> list[ClusterSettings]:
    value = root.raw("clusters")
    if isinstance(value, Missing):
        root.problem("clusters", "required: add at least one [[clusters]] table")
        return []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        root.problem("clusters", "must be an array of tables, written [[clusters]]")
        return []
    if not value:
        root.problem("clusters", "must contain at least one cluster")
    clusters: list[ClusterSettings] = []
    first_index: dict[str, int] = {}
    for index, data in enumerate(value):
        clusters.append(_cluster(Section(ctx, f"clusters[{index}]", data)))
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            continue
        if name in first_index:
            ctx.problem(
                f"clusters[{index}].name",
                f"duplicate cluster name {name!r} (also clusters[{first_index[name]}])",
            )
        first_index.setdefault(name, index)
    return clusters


def _cluster(s: Section) -> ClusterSettings:
    d = ClusterSettings(name="", bootstrap_servers=())
    name = s.require("name", printable)
    servers = s.require("bootstrap_servers", bootstrap_servers)
    properties = s.string_map("consumer_properties")
    for key in _PATH_PROPERTIES & properties.keys():
        # A file name with a NUL cannot be opened and one with a newline cannot be named in a
        # one-line message. (Other values are length-prefixed protocol strings or secrets.)
        problem = control_character(properties[key])
        if problem is not None:
            s.ctx.problem(join_path(s.at("consumer_properties"), key), problem)
            del properties[key]  # reported; the start-up checks must not echo it again
    for key, allowed in _PROPERTY_CHOICES.items():
        if key in properties and properties[key].upper() not in {a.upper() for a in allowed}:
            s.ctx.problem(
                join_path(s.at("consumer_properties"), key),
                f"must be one of {', '.join(allowed)}, got {properties[key]!r}",
            )
    labels = s.string_map("labels", plain_text=True)
    for label in labels:
        where = join_path(s.at("labels"), label)
        if label in BUILTIN_LABELS:
            s.ctx.problem(where, "collides with a built-in label of the exported series")
        elif not _LABEL_NAME.fullmatch(label):
            s.ctx.problem(where, "not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        elif label.startswith("__"):
            s.ctx.problem(where, "label names starting with '__' are reserved by Prometheus")
    if "aws_msk_iam" in s.data:
        s.raw("aws_msk_iam")
        s.problem(
            "aws_msk_iam",
            "AWS MSK IAM authentication is not supported; use SASL/SCRAM or SASL/OAUTHBEARER "
            "through consumer_properties",
        )
    filters = {}
    for key in ("group_whitelist", "group_blacklist", "topic_whitelist", "topic_blacklist"):
        filters[key] = s.regex_list(key, getattr(d, key))
        if key.endswith("whitelist") and s.data.get(key) == []:
            s.problem(key, 'is empty, so nothing would be kept; use [".*"] to keep everything')
    # Built even when the name or the servers are wrong (their problems are recorded, so these
    # settings are never used): the start-up checks still see its consumer_properties.
    result = ClusterSettings(
        name=name or "",
        bootstrap_servers=servers or (),
        consumer_properties=MappingProxyType(properties),
        labels=MappingProxyType(labels),
        **filters,
    )
    s.finish()
    return result
