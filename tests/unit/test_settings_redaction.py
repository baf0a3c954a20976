"""Secrets never appear in the redacted view, in error messages or in scrubbed text."""

from __future__ import annotations

import json
import textwrap

import pytest

from klag_pipeline.errors import ConfigError
from klag_pipeline.settings.loader import parse_settings
from klag_pipeline.settings.redaction import (
    is_secret_key,
    redact_settings,
    scrub,
    secret_values,
)

BCRYPT = "$2b$12$" + "a" * 53
SETTINGS = textwrap.dedent(
    f"""
    [exporter.otel]
    endpoint = "https://otel-user:otel-pass-123@collector:4317"
    headers = {{ Authorization = "Bearer header-token-123", "x-tenant" = "tenant-7" }}
    resource_attributes = {{ "service.namespace" = "kafka" }}

    [exporter.http.basic_auth_users]
    admin = "{BCRYPT}"

    [[clusters]]
    name = "prod"
    bootstrap_servers = "k:9093"

    [clusters.consumer_properties]
    "security.protocol" = "SASL_SSL"
    "sasl.mechanism" = "OAUTHBEARER"
    "sasl.username" = "alice"
    "sasl.password" = "sasl-pass-123"
    "ssl.key.password" = "key-pass-123"
    "sasl.oauthbearer.client.secret" = "oauth-secret-123"
    "sasl.oauthbearer.client.id" = "oauth-client-123"
    "ssl.ca.location" = "/etc/ca.pem"

    [clusters.labels]
    environment = "prod"
    """
)
SECRETS = (
    "otel-pass-123",
    "Bearer header-token-123",
    "tenant-7",
    BCRYPT,
    "sasl-pass-123",
    "key-pass-123",
    "oauth-secret-123",
    "oauth-client-123",
)


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "client_secret",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "access_token",
        "SASL.PASSWORD",
        "sasl.jaas.config",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["sasl.username", "ssl.ca.location", "ssl.key.location", "name", "security.protocol"]
)
def test_non_secret_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redacted_view_masks_every_secret_and_keeps_the_rest() -> None:
    settings = parse_settings(SETTINGS, {}).settings

    view = redact_settings(settings)
    text = json.dumps(view)

    for secret in SECRETS:
        assert secret not in text
    properties = view["clusters"][0]["consumer_properties"]
    assert properties["sasl.password"] == "***"
    assert properties["sasl.oauthbearer.client.secret"] == "***"
    assert properties["sasl.username"] == "alice"
    assert properties["ssl.ca.location"] == "/etc/ca.pem"
    assert view["exporter"]["otel"]["headers"] == {"Authorization": "***", "x-tenant": "***"}
    assert view["exporter"]["otel"]["endpoint"] == "https://otel-user:***@collector:4317"
    assert view["exporter"]["http"]["basic_auth_users"] == {"admin": "***"}
    assert view["clusters"][0]["labels"] == {"environment": "prod"}
    assert view["clusters"][0]["topic_blacklist"] == ["__.*"]
    assert view["exporter"]["poll_interval"] == 30.0


def test_secret_values_are_exactly_the_masked_ones() -> None:
    settings = parse_settings(SETTINGS, {}).settings

    assert secret_values(settings) == frozenset(SECRETS)


def test_secret_values_never_appear_in_config_errors() -> None:
    text = SETTINGS.replace('"sasl-pass-123"', '"${PW}"').replace(
        'environment = "prod"', 'environment = "prod"\nbad = ["${PW}"]'
    )
    text = text.replace("[exporter.otel]", '[exporter]\ngranularity = "${PW}"\n[exporter.otel]')

    with pytest.raises(ConfigError) as caught:
        parse_settings(text, {"PW": "leaky-secret-9"})

    message = str(caught.value)
    assert "exporter.granularity: must be 'partition' or 'topic', got string '***'" in message
    assert "clusters[0].labels.bad" in message
    assert "leaky-secret-9" not in message


def test_scrub_replaces_longest_secrets_first() -> None:
    text = "login alice/pass-1234 failed; pass-1 is a prefix"

    assert scrub(text, ["pass-1", "pass-1234", ""]) == "login alice/*** failed; *** is a prefix"


def test_scrub_leaves_tiny_values_alone() -> None:
    assert scrub("a cat sat", ["a"]) == "a cat sat"
