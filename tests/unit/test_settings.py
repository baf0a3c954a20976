"""The settings loader: valid files, defaults, compatibility, and every class of invalid input."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from klag_pipeline.errors import ConfigError
from klag_pipeline.settings.durations import format_duration, parse_duration
from klag_pipeline.settings.loader import LoadedSettings, load_settings, parse_settings
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    LeadershipSettings,
    PerformanceSettings,
    TimestampSamplingSettings,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).with_name("test_settings_fixtures")

CLUSTER = """
[[clusters]]
name = "local"
bootstrap_servers = "127.0.0.1:9092"
"""


def load(text: str, environ: dict[str, str] | None = None) -> LoadedSettings:
    return parse_settings(textwrap.dedent(text), environ or {}, source="test.toml")


def problems(text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load(text, environ)
    return dict(caught.value.problems)


# --- valid files -------------------------------------------------------------------------------


def test_a_cluster_alone_gets_every_default() -> None:
    loaded = load(CLUSTER)

    assert loaded.settings.exporter == ExporterSettings()
    assert loaded.settings.clusters == (
        ClusterSettings(name="local", bootstrap_servers=("127.0.0.1:9092",)),
    )
    assert loaded.warnings == ()
    assert loaded.settings.source == "test.toml"


def test_reference_file_equals_the_schema_defaults() -> None:
    loaded = load_settings(REPO / "config" / "settings.reference.toml", environ={})

    assert loaded.warnings == ()
    assert loaded.settings.exporter == ExporterSettings()
    (cluster,) = loaded.settings.clusters
    assert cluster == ClusterSettings(
        name=cluster.name, bootstrap_servers=cluster.bootstrap_servers
    )


def test_reference_file_mentions_every_schema_key() -> None:
    """A key added to the schema must be documented in the reference file too."""
    text = (REPO / "config" / "settings.reference.toml").read_text()
    written = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.MULTILINE))
    sections = (
        ExporterSettings(),
        TimestampSamplingSettings(),
        PerformanceSettings(),
        LeadershipSettings(),
        *(
            getattr(ExporterSettings(), name)
            for name in ("otel", "jsonl", "http", "health", "sharding")
        ),
    )
    expected = {name for section in sections for name in section.__dataclass_fields__}
    expected |= set(ClusterSettings.__dataclass_fields__)
    nested = {
        "timestamp_sampling",
        "otel",
        "jsonl",
        "http",
        "performance",
        "leadership",
        "health",
        "sharding",
    }
    assert expected - nested - written == set()


def test_example_file_loads() -> None:
    loaded = load_settings(
        REPO / "config" / "settings.example.toml", environ={"KAFKA_PROD_PASSWORD": "pw"}
    )

    names = [c.name for c in loaded.settings.clusters]
    assert names == ["production", "staging"]
    production = loaded.settings.clusters[0]
    assert production.consumer_properties["sasl.username"] == "klag-pipeline"
    assert production.consumer_properties["sasl.password"] == "pw"
    assert not production.keeps_group("console-consumer-123")
    assert production.keeps_group("payments")


def test_klag_exporter_readme_config_loads_unchanged() -> None:
    loaded = load_settings(
        FIXTURES / "klag_exporter_readme.toml",
        environ={"KAFKA_USER": "alice", "KAFKA_PASSWORD": "s3cret"},
    )

    assert loaded.warnings == ()
    exporter = loaded.settings.exporter
    assert (exporter.poll_interval, exporter.http_port, exporter.granularity) == (
        30.0,
        8000,
        "partition",
    )
    assert exporter.timestamp_sampling.max_concurrent_fetches == 10
    assert exporter.otel.export_interval == 60.0
    (cluster,) = loaded.settings.clusters
    assert cluster.bootstrap_servers == ("kafka1:9092", "kafka2:9092")
    assert dict(cluster.consumer_properties) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
    }
    assert dict(cluster.labels) == {"environment": "production", "datacenter": "us-east-1"}
    assert not cluster.keeps_topic("__consumer_offsets")


def test_klag_exporter_only_keys_load_with_one_warning_each() -> None:
    loaded = load_settings(FIXTURES / "klag_exporter_full.toml", environ={})

    warned = sorted(w.path for w in loaded.warnings)
    assert warned == sorted(
        [
            "exporter.timestamp_sampling.rate_min_msgs_per_sec",
            "exporter.performance.client_recycle_interval",
            "exporter.performance.max_blocking_threads",
            "exporter.performance.compacted_topics_cache_ttl",
            "exporter.performance.metadata_cache_ttl",
            "exporter.performance.consumer_groups_cache_ttl",
        ]
    )
    assert all("ignored" in w.message for w in loaded.warnings)
    exporter = loaded.settings.exporter
    sampling = exporter.timestamp_sampling
    # klag-exporter's rate mode and its history bounds are honoured (docs/time-lag.md).
    assert (sampling.mode, sampling.rate_history_samples, sampling.rate_history_max_age) == (
        "rate",
        5,
        600.0,
    )
    assert exporter.staleness_threshold == 600.0
    assert exporter.performance.max_concurrent_groups == 30
    leadership = exporter.leadership
    assert leadership.lease_namespace == "default"
    assert (leadership.lease_duration, leadership.renew_deadline) == (30.0, 20.0)


def test_sampling_mode_is_message_or_rate() -> None:
    assert load(CLUSTER).settings.exporter.timestamp_sampling.mode == "message"
    with pytest.raises(ConfigError) as info:
        parse_settings('[exporter.timestamp_sampling]\nmode = "guess"\n' + CLUSTER, {})
    assert [path for path, _ in info.value.problems] == ["exporter.timestamp_sampling.mode"]


def test_rate_mode_needs_the_evaluation_stage() -> None:
    text = '[exporter.timestamp_sampling]\nmode = "rate"\n[exporter.health]\nenabled = false\n'
    with pytest.raises(ConfigError) as info:
        parse_settings(text + CLUSTER, {})
    ((path, message),) = info.value.problems
    assert path == "exporter.timestamp_sampling.mode"
    assert "[exporter.health]" in message
    # With time lag switched off altogether nothing needs estimating.
    off = text.replace('mode = "rate"', 'mode = "rate"\nenabled = false')
    assert load(off + CLUSTER).settings.exporter.timestamp_sampling.mode == "rate"


def test_staleness_threshold_defaults_to_three_poll_intervals() -> None:
    loaded = load('[exporter]\npoll_interval = "1m"\n' + CLUSTER)

    assert loaded.settings.exporter.staleness_threshold == 180.0


def test_regex_lists_accept_a_single_string_and_use_search_semantics() -> None:
    loaded = load(CLUSTER + 'group_whitelist = "^pay"\ngroup_blacklist = ["test"]\n')

    (cluster,) = loaded.settings.clusters
    assert cluster.keeps_group("payments")
    assert not cluster.keeps_group("payments-test-1")
    assert not cluster.keeps_group("orders")


def test_bootstrap_servers_as_list_or_string_with_spaces() -> None:
    as_list = load(CLUSTER.replace('"127.0.0.1:9092"', '["a:1", "[::1]:2"]'))
    as_string = load(CLUSTER.replace('"127.0.0.1:9092"', '" a:1 , [::1]:2 "'))

    assert as_list.settings.clusters[0].bootstrap_servers == ("a:1", "[::1]:2")
    assert as_string.settings.clusters[0].bootstrap_servers == ("a:1", "[::1]:2")


def test_consumer_properties_and_labels_become_strings_and_keep_their_case() -> None:
    loaded = load(
        CLUSTER
        + """
        [clusters.consumer_properties]
        "request.timeout.ms" = 15000
        "enable.ssl.certificate.verification" = false
        [clusters.labels]
        Team = "payments"
        tier = 1
        """
    )

    (cluster,) = loaded.settings.clusters
    assert dict(cluster.consumer_properties) == {
        "request.timeout.ms": "15000",
        "enable.ssl.certificate.verification": "false",
    }
    assert dict(cluster.labels) == {"Team": "payments", "tier": "1"}


def test_leadership_aliases_from_klag_exporter() -> None:
    loaded = load(
        "[exporter.leadership]\nlease_duration_secs = 20\ngrace_period_secs = 5\n" + CLUSTER
    )

    leadership = loaded.settings.exporter.leadership
    assert (leadership.lease_duration, leadership.renew_deadline) == (20.0, 15.0)


def test_a_kafka_leadership_group_may_be_named_anything_kafka_accepts() -> None:
    # Only a Kubernetes Lease has to be a DNS-1123 name; a Kafka group id is any string.
    loaded = load(
        "[exporter.leadership]\nprovider = 'kafka'\nlease_name = 'Klag_Pipeline'\n" + CLUSTER
    )

    assert loaded.settings.exporter.leadership.lease_name == "Klag_Pipeline"


def test_empty_identity_means_unset() -> None:
    loaded = load('[exporter.leadership]\nidentity = "${POD_NAME:-}"\n' + CLUSTER)

    assert loaded.settings.exporter.leadership.identity is None


def test_settings_are_frozen() -> None:
    settings = load(CLUSTER).settings

    with pytest.raises(AttributeError):
        settings.exporter.poll_interval = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.clusters[0].labels["x"] = "y"  # type: ignore[index]


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m 30s", 90.0),
        ("1m30s", 90.0),
        ("2hours", 7200.0),
        ("15min", 900.0),
        ("1.5s", 1.5),
        ("1d", 86400.0),
        ("0s", 0.0),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [30, 1.5, "30", " 30 "])
def test_bare_numbers_are_not_durations(value: object) -> None:
    with pytest.raises(ValueError, match="with a unit"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["", "30 parsecs", "-5s", "s", "5M", True, [1]])
def test_garbage_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(value)


@pytest.mark.parametrize(("seconds", "text"), [(90, "1m 30s"), (0.5, "500ms"), (3600, "1h")])
def test_durations_format_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == seconds


# --- invalid files -----------------------------------------------------------------------------

INVALID = [
    ("[[clusters]]\nbootstrap_servers = 'a:1'\n", "clusters[0].name", "required"),
    ("[[clusters]]\nname = 'a'\n", "clusters[0].bootstrap_servers", "required"),
    ("[[clusters]]\nname = ''\nbootstrap_servers = 'a:1'\n", "clusters[0].name", "empty"),
    ("[exporter]\nhttp_port = '8000'\n" + CLUSTER, "exporter.http_port", "must be an integer"),
    ("[exporter]\nhttp_port = 0\n" + CLUSTER, "exporter.http_port", "at least 1"),
    ("[exporter]\nhttp_port = 65536\n" + CLUSTER, "exporter.http_port", "at most 65535"),
    ("[exporter]\nhttp_host = 'no such host'\n" + CLUSTER, "exporter.http_host", "hostname"),
    (
        "[exporter]\npoll_interval = 30\n" + CLUSTER,
        "exporter.poll_interval",
        "must be a duration with a unit such as '30s', got 30",
    ),
    (
        "[exporter]\npoll_interval = '30 parsecs'\n" + CLUSTER,
        "exporter.poll_interval",
        "must be a duration",
    ),
    ("[exporter]\npoll_interval = '0s'\n" + CLUSTER, "exporter.poll_interval", "between 100ms"),
    (
        "[exporter]\nstaleness_threshold = '10s'\n" + CLUSTER,
        "exporter.staleness_threshold",
        "at least poll_interval",
    ),
    ("[exporter]\ngranularity = 'group'\n" + CLUSTER, "exporter.granularity", "'partition'"),
    (
        "[exporter.timestamp_sampling]\nenabled = 'yes'\n" + CLUSTER,
        "exporter.timestamp_sampling.enabled",
        "true or false",
    ),
    (
        "[exporter.otel]\nprotocol = 'http'\n" + CLUSTER,
        "exporter.otel.protocol",
        "'grpc' or 'http/protobuf'",
    ),
    ("[exporter.otel]\nendpoint = 'localhost'\n" + CLUSTER, "exporter.otel.endpoint", "URL"),
    (
        "[exporter.performance]\nqueue_capacity = 0\n" + CLUSTER,
        "exporter.performance.queue_capacity",
        "at least 1",
    ),
    (
        "[exporter.leadership]\nprovider = 'etcd'\n" + CLUSTER,
        "exporter.leadership.provider",
        "'kubernetes' or 'kafka'",
    ),
    (
        "[exporter.leadership]\nrenew_deadline = '20s'\n" + CLUSTER,
        "exporter.leadership.renew_deadline",
        "less than lease_duration",
    ),
    (
        "[exporter.leadership]\ngrace_period_secs = 15\n" + CLUSTER,
        "exporter.leadership.grace_period_secs",
        "less than the lease duration",
    ),
    (
        "[exporter.leadership]\nlease_duration = '15s'\nlease_duration_secs = 15\n" + CLUSTER,
        "exporter.leadership.lease_duration_secs",
        "not both",
    ),
    (
        "[exporter.leadership]\nlease_name = 'Klag_Pipeline'\n" + CLUSTER,
        "exporter.leadership.lease_name",
        "must be a Kubernetes object name",
    ),
    (
        "[exporter.leadership]\nlease_namespace = 'ops.team'\n" + CLUSTER,
        "exporter.leadership.lease_namespace",
        "must be a Kubernetes namespace",
    ),
    (
        "[exporter.leadership]\ncluster = 'elsewhere'\n" + CLUSTER,
        "exporter.leadership.cluster",
        "no cluster is named 'elsewhere'",
    ),
    (
        "[exporter.sharding]\ncluster = 'elsewhere'\n" + CLUSTER,
        "exporter.sharding.cluster",
        "no cluster is named 'elsewhere'",
    ),
    (
        "[exporter.sharding]\nsession_timeout = '6s'\nheartbeat_interval = '4s'\n" + CLUSTER,
        "exporter.sharding.heartbeat_interval",
        "at most half of session_timeout (6s), got 4s",
    ),
    (
        "[exporter.sharding]\nbuckets = 0\n" + CLUSTER,
        "exporter.sharding.buckets",
        "at least 1",
    ),
    (
        "[exporter.sharding]\nenabled = true\n[exporter.leadership]\nenabled = true\n" + CLUSTER,
        "exporter.sharding.enabled",
        "cannot be combined with [exporter.leadership]",
    ),
    (
        "[exporter.http]\ntls_cert_file = '/c.pem'\n" + CLUSTER,
        "exporter.http.tls_key_file",
        "go together",
    ),
    (
        "[exporter.http.basic_auth_users]\nadmin = 'plaintext'\n" + CLUSTER,
        "exporter.http.basic_auth_users.admin",
        "bcrypt",
    ),
    (
        CLUSTER + "group_whitelist = ['(unclosed']\n",
        "clusters[0].group_whitelist[0]",
        "'(unclosed'",
    ),
    (CLUSTER + "topic_blacklist = '*bad'\n", "clusters[0].topic_blacklist", "invalid regex '*bad'"),
    (CLUSTER + "group_whitelist = []\n", "clusters[0].group_whitelist", "nothing would be kept"),
    (CLUSTER + "topic_whitelist = 5\n", "clusters[0].topic_whitelist", "array of regexes"),
    (CLUSTER + "[clusters.labels]\n'1abc' = 'x'\n", "clusters[0].labels.1abc", "not a valid"),
    (CLUSTER + "[clusters.labels]\n__bad = 'x'\n", "clusters[0].labels.__bad", "reserved"),
    (CLUSTER + "[clusters.labels]\n'a-b' = 'x'\n", "clusters[0].labels.a-b", "not a valid"),
    (CLUSTER + "[clusters.labels]\ntopic = 'x'\n", "clusters[0].labels.topic", "built-in label"),
    (
        CLUSTER + "[clusters.labels]\ncluster_name = 'x'\n",
        "clusters[0].labels.cluster_name",
        "built-in label",
    ),
    (CLUSTER + "[clusters.labels]\nx = [1]\n", "clusters[0].labels.x", "must be a string"),
    (
        CLUSTER + "[clusters.consumer_properties]\n'security.protocol' = 'SASL'\n",
        'clusters[0].consumer_properties."security.protocol"',
        "SASL_SSL",
    ),
    (
        CLUSTER + "[clusters.consumer_properties]\n'sasl.mechanism' = 'SCRAM'\n",
        'clusters[0].consumer_properties."sasl.mechanism"',
        "SCRAM-SHA-512",
    ),
    (
        "[[clusters]]\nname = 'a'\nbootstrap_servers = 'a:1,b'\n",
        "clusters[0].bootstrap_servers",
        "'b'",
    ),
    (
        "[[clusters]]\nname = 'a'\nbootstrap_servers = 'a:99999'\n",
        "clusters[0].bootstrap_servers",
        "'a:99999'",
    ),
    (
        "[[clusters]]\nname = 'a'\nbootstrap_servers = ''\n",
        "clusters[0].bootstrap_servers",
        "at least one",
    ),
    (CLUSTER + "aws_msk_iam = {}\n", "clusters[0].aws_msk_iam", "not supported"),
    (CLUSTER + CLUSTER, "clusters[1].name", "duplicate cluster name 'local' (also clusters[0])"),
    ("clusters = []\n", "clusters", "at least one cluster"),
    ("[exporter]\n", "clusters", "required"),
    ("[clusters]\nname = 'a'\n", "clusters", "array of tables"),
    ("exporter = 5\n" + CLUSTER, "exporter", "must be a table"),
    ("[exporter]\npol_interval = '30s'\n" + CLUSTER, "exporter.pol_interval", "'poll_interval'"),
    (CLUSTER + "topic_whitelst = ['x']\n", "clusters[0].topic_whitelst", "'topic_whitelist'"),
    ("[exportr]\n" + CLUSTER, "exportr", "did you mean 'exporter'?"),
    ("[exporter]\nzzz = 1\n" + CLUSTER, "exporter.zzz", "unknown key (known:"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), INVALID)
def test_invalid_settings_name_the_path_and_the_problem(
    text: str, path: str, fragment: str
) -> None:
    found = problems(text)

    assert path in found, found
    assert fragment in found[path]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        """
        [exporter]
        poll_interval = 30
        http_port = -1
        granularity = "none"
        [exporter.performance]
        queue_capacity = 0
        [[clusters]]
        name = "a"
        group_blacklist = ["("]
        [clusters.labels]
        group = "x"
        [[clusters]]
        name = "a"
        bootstrap_servers = "b:1"
        unknown_thing = 1
        """
    )

    assert set(found) == {
        "exporter.poll_interval",
        "exporter.http_port",
        "exporter.granularity",
        "exporter.performance.queue_capacity",
        "clusters[0].bootstrap_servers",
        "clusters[0].group_blacklist[0]",
        "clusters[0].labels.group",
        "clusters[1].name",
        "clusters[1].unknown_thing",
    }


def test_config_error_message_lists_every_problem_one_per_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load("[exporter]\npoll_interval = 30\n[[clusters]]\nname = 'a'\n")

    assert str(caught.value).splitlines() == [
        "exporter.poll_interval: must be a duration with a unit such as '30s', got 30",
        "clusters[0].bootstrap_servers: required",
    ]


def test_toml_syntax_error_names_the_file_and_line() -> None:
    found = problems('[exporter]\npoll_interval = "30s\n')

    assert list(found) == ["test.toml"]
    assert "not valid TOML" in found["test.toml"]
    assert "line 2" in found["test.toml"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.toml", environ={})

    ((path, message),) = caught.value.problems
    assert path == str(tmp_path / "absent.toml")
    assert "cannot read" in message
