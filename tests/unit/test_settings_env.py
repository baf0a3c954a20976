"""${NAME} substitution and KLAG_ environment overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from klag_pipeline.errors import ConfigError
from klag_pipeline.settings.loader import LoadedSettings, load_settings, parse_settings

CLUSTER = """
[[clusters]]
name = "local"
bootstrap_servers = "127.0.0.1:9092"
"""


def load(text: str, environ: dict[str, str]) -> LoadedSettings:
    return parse_settings(textwrap.dedent(text), environ, source="test.toml")


def problems(text: str, environ: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load(text, environ)
    return dict(caught.value.problems)


def properties(loaded: LoadedSettings) -> dict[str, str]:
    return dict(loaded.settings.clusters[0].consumer_properties)


# --- substitution ------------------------------------------------------------------------------


def test_set_variable_is_substituted() -> None:
    loaded = load(CLUSTER.replace("127.0.0.1:9092", "${BROKERS}"), {"BROKERS": "k1:1,k2:2"})

    assert loaded.settings.clusters[0].bootstrap_servers == ("k1:1", "k2:2")


@pytest.mark.parametrize("environ", [{}, {"BROKERS": ""}])
def test_default_is_used_when_unset_or_empty(environ: dict[str, str]) -> None:
    loaded = load(CLUSTER.replace("127.0.0.1:9092", "${BROKERS:-fallback:9092}"), environ)

    assert loaded.settings.clusters[0].bootstrap_servers == ("fallback:9092",)


def test_unset_variable_is_an_error_naming_it_and_its_line() -> None:
    text = CLUSTER + '[clusters.consumer_properties]\n"sasl.password" = "${KAFKA_PASSWORD}"\n'

    found = problems(text, {})

    assert list(found) == ["test.toml:6"]
    assert "KAFKA_PASSWORD is not set" in found["test.toml:6"]


def test_every_unset_variable_is_reported() -> None:
    found = problems('[[clusters]]\nname = "${A}"\nbootstrap_servers = "${B}"\n', {})

    assert set(found) == {"test.toml:2", "test.toml:3"}
    assert "A is not set" in found["test.toml:2"]
    assert "B is not set" in found["test.toml:3"]


def test_optional_form_and_escape() -> None:
    loaded = load(
        CLUSTER + '[clusters.labels]\nopt = "x${?UNSET}y"\nliteral = "$${NOT_A_VARIABLE}"\n',
        {},
    )

    assert dict(loaded.settings.clusters[0].labels) == {
        "opt": "xy",
        "literal": "${NOT_A_VARIABLE}",
    }


def test_references_in_comments_are_ignored() -> None:
    loaded = load(
        CLUSTER + '# "sasl.password" = "${KAFKA_PASSWORD}"\n[clusters.labels] # ${ALSO_UNSET}\n',
        {},
    )

    assert loaded.settings.clusters[0].labels == {}


def test_hash_inside_a_string_is_not_a_comment() -> None:
    loaded = load(CLUSTER + '[clusters.labels]\nx = "#${V}"\n', {"V": "v"})

    assert loaded.settings.clusters[0].labels["x"] == "#v"


@pytest.mark.parametrize(
    "secret", ['pa"ss', "back\\slash", "new\nline", "tab\tbed", "# not a comment", "ünïcødé"]
)
def test_values_inside_double_quotes_arrive_byte_for_byte(secret: str) -> None:
    loaded = load(
        CLUSTER + '[clusters.consumer_properties]\n"sasl.password" = "${PW}"\n', {"PW": secret}
    )

    assert properties(loaded)["sasl.password"] == secret


def test_values_inside_multiline_strings_are_escaped_too() -> None:
    loaded = load(CLUSTER + '[clusters.labels]\nx = """\nbefore ${V} after"""\n', {"V": 'a"""b'})

    assert loaded.settings.clusters[0].labels["x"] == 'before a"""b after'


def test_literal_string_takes_the_value_verbatim_or_refuses() -> None:
    ok = load(CLUSTER + "[clusters.labels]\nx = '${V}'\n", {"V": 'back\\slash"'})
    found = problems(CLUSTER + "[clusters.labels]\nx = '${V}'\n", {"V": "it's"})

    assert ok.settings.clusters[0].labels["x"] == 'back\\slash"'
    assert "cannot be placed in a '...' string" in found["test.toml:6"]


def test_unquoted_reference_inserts_toml() -> None:
    loaded = load("[exporter]\nhttp_port = ${PORT}\n" + CLUSTER, {"PORT": "9100"})

    assert loaded.settings.exporter.http_port == 9100


# --- KLAG_ overrides ---------------------------------------------------------------------------


def test_override_is_parsed_as_toml_and_nested_by_double_underscore() -> None:
    loaded = load(
        "[exporter]\nhttp_port = 8000\n" + CLUSTER,
        {
            "KLAG_EXPORTER__HTTP_PORT": "9000",
            "KLAG_EXPORTER__TIMESTAMP_SAMPLING__ENABLED": "false",
            "KLAG_EXPORTER__POLL_INTERVAL": "10s",
            "KLAG_EXPORTER__OTEL__RESOURCE_ATTRIBUTES": '{"deployment.environment" = "prod"}',
        },
    )

    exporter = loaded.settings.exporter
    assert exporter.http_port == 9000
    assert exporter.timestamp_sampling.enabled is False
    assert exporter.poll_interval == 10.0
    assert exporter.staleness_threshold == 30.0
    assert dict(exporter.otel.resource_attributes) == {"deployment.environment": "prod"}


def test_override_matches_existing_keys_case_insensitively() -> None:
    loaded = load(
        '[exporter]\npoll_interval = "1m"\n' + CLUSTER,
        {"klag_ignored": "x", "KLAG_exporter__Poll_Interval": "2m"},
    )

    assert loaded.settings.exporter.poll_interval == 120.0


def test_clusters_are_addressed_by_index_and_can_be_appended() -> None:
    loaded = load(
        CLUSTER,
        {
            "KLAG_CLUSTERS__0__BOOTSTRAP_SERVERS": "kafka-0:9092,kafka-1:9092",
            "KLAG_CLUSTERS__0__LABELS__Team": "core",
            "KLAG_CLUSTERS__1__NAME": "second",
            "KLAG_CLUSTERS__1__BOOTSTRAP_SERVERS": '["b:1"]',
        },
    )

    first, second = loaded.settings.clusters
    assert first.bootstrap_servers == ("kafka-0:9092", "kafka-1:9092")
    assert dict(first.labels) == {"Team": "core"}
    assert (second.name, second.bootstrap_servers) == ("second", ("b:1",))


def test_clusters_can_come_from_the_environment_alone() -> None:
    loaded = load(
        "",
        {"KLAG_CLUSTERS__0__NAME": "only", "KLAG_CLUSTERS__0__BOOTSTRAP_SERVERS": "h:1"},
    )

    assert [c.name for c in loaded.settings.clusters] == ["only"]


def test_merge_token_adds_to_a_table_instead_of_replacing_it() -> None:
    text = CLUSTER + '[clusters.consumer_properties]\n"security.protocol" = "SASL_SSL"\n'

    merged = load(text, {"KLAG_CLUSTERS__0__CONSUMER_PROPERTIES": '@merge {"client.id" = "x"}'})
    replaced = load(text, {"KLAG_CLUSTERS__0__CONSUMER_PROPERTIES": '{"client.id" = "x"}'})

    assert properties(merged) == {"security.protocol": "SASL_SSL", "client.id": "x"}
    assert properties(replaced) == {"client.id": "x"}


def test_bad_override_names_the_variable() -> None:
    found = problems(
        CLUSTER,
        {
            "KLAG_EXPORTER__HTTP_PORT": "many",
            "KLAG_EXPORTER__HTTP_PROT": "1",
            "KLAG_CLUSTERS__5__NAME": "x",
            "KLAG_EXPORTER__QUEUE": "@int nope",
        },
    )

    assert found["exporter.http_port"] == (
        "must be an integer, got string 'many' (set by environment variable "
        "KLAG_EXPORTER__HTTP_PORT)"
    )
    assert "did you mean 'http_port'?" in found["exporter.http_prot"]
    assert "KLAG_EXPORTER__HTTP_PROT" in found["exporter.http_prot"]
    assert "out of range" in found["KLAG_CLUSTERS__5__NAME"]
    assert "invalid value" in found["KLAG_EXPORTER__QUEUE"]


def test_unrelated_klag_variables_are_not_settings() -> None:
    loaded = load(CLUSTER, {"KLAG_TEST_BOOTSTRAP": "127.0.0.1:1", "KLAG_EXPORTR__PORT": "1"})

    assert loaded.settings.exporter.http_port == 8000
    assert [w.path for w in loaded.warnings] == ["KLAG_EXPORTR__PORT"]


def test_explicit_environ_is_hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(CLUSTER)
    monkeypatch.setenv("KLAG_EXPORTER__HTTP_PORT", "9999")

    assert load_settings(path, environ={}).settings.exporter.http_port == 8000
    assert load_settings(path).settings.exporter.http_port == 9999
