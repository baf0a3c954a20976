"""consumer_properties (librdkafka names) → AIOKafkaClient kwargs."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from klag_pipeline.errors import ConfigError
from klag_pipeline.kafka.client_config import (
    UnsecuredJwtTokenProvider,
    client_kwargs,
    isolation_level,
    kerberos_identity,
    sasl_mechanism,
    secret_values,
)
from klag_pipeline.kafka.kerberos import KerberosIdentity


def test_defaults_are_plaintext_with_no_warnings() -> None:
    kwargs, warnings = client_kwargs({})
    assert kwargs == {"security_protocol": "PLAINTEXT"}
    assert warnings == ()


def test_basic_keys_map_to_client_kwargs() -> None:
    kwargs, warnings = client_kwargs(
        {
            "client.id": "klag",
            "request.timeout.ms": "15000",
            "metadata.max.age.ms": "60000",
            "isolation.level": "read_committed",
        }
    )
    assert kwargs == {
        "client_id": "klag",
        "request_timeout_ms": 15000,
        "metadata_max_age_ms": 60000,
        "security_protocol": "PLAINTEXT",
    }
    assert warnings == ()


def test_isolation_level() -> None:
    assert isolation_level({"isolation.level": "read_committed"}) == 1
    assert isolation_level({"isolation.level": "READ_UNCOMMITTED"}) == 0
    assert isolation_level({}) == 0


@pytest.mark.parametrize("key", ["sasl.mechanism", "sasl.mechanisms"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_user_password_mechanisms(key: str, mechanism: str) -> None:
    kwargs, warnings = client_kwargs(
        {
            "security.protocol": "sasl_plaintext",
            key: mechanism,
            "sasl.username": "alice",
            "sasl.password": "s3cret",
        }
    )
    assert kwargs == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism.upper(),
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
    }
    assert warnings == ()


def test_gssapi_maps_service_name_keytab_and_principal(tmp_path: Path) -> None:
    keytab = tmp_path / "klag.keytab"
    keytab.write_bytes(b"\x05\x02")
    props = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "GSSAPI",
        "sasl.kerberos.service.name": "kafka-svc",
        "sasl.kerberos.keytab": str(keytab),
        "sasl.kerberos.principal": "klag@EXAMPLE.COM",
    }
    kwargs, warnings = client_kwargs(props)
    assert kwargs["sasl_mechanism"] == "GSSAPI"
    assert kwargs["sasl_kerberos_service_name"] == "kafka-svc"
    assert warnings == ()
    assert kerberos_identity(props) == KerberosIdentity(str(keytab), "klag@EXAMPLE.COM")
    with pytest.raises(ConfigError) as info:
        client_kwargs({**props, "sasl.kerberos.keytab": str(tmp_path / "missing")})
    assert list(info.value.problems) == [
        (
            'consumer_properties."sasl.kerberos.keytab"',
            f"cannot read {tmp_path / 'missing'}: no such file or directory",
        )
    ]


async def test_oauthbearer_unsecured_token() -> None:
    kwargs, warnings = client_kwargs(
        {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER",
            "sasl.oauthbearer.config": "principal=klag scope=read lifeSeconds=60",
            "sasl.oauthbearer.assertion.file": "/jwt",
        }
    )
    provider = kwargs["sasl_oauth_token_provider"]
    assert isinstance(provider, UnsecuredJwtTokenProvider)
    header, payload, signature = (await provider.token()).split(".")
    assert signature == ""
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "klag"
    assert claims["scope"] == "read"
    assert claims["exp"] - claims["iat"] == 60
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))) == {
        "alg": "none"
    }
    assert [w.split(":")[0] for w in warnings] == [
        "consumer_properties.sasl.oauthbearer.assertion.file"
    ]


def test_every_unsupported_key_is_warned_never_dropped() -> None:
    _, warnings = client_kwargs(
        {"group.id": "x", "fetch.max.bytes": "1", "socket.nagle.disable": "true"}
    )
    assert sorted(w.split(":")[0] for w in warnings) == [
        "consumer_properties.fetch.max.bytes",
        "consumer_properties.group.id",
        "consumer_properties.socket.nagle.disable",
    ]


def test_sasl_and_ssl_keys_without_matching_protocol_are_warned() -> None:
    _, warnings = client_kwargs({"sasl.username": "u", "ssl.ca.location": "/ca.pem"})
    assert len(warnings) == 2
    assert all("security.protocol is PLAINTEXT" in w for w in warnings)


def test_invalid_values_are_all_reported_without_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        client_kwargs(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.password": "hunter2",
                "request.timeout.ms": "soon",
                "isolation.level": "serializable",
            }
        )
    paths = [path for path, _ in info.value.problems]
    assert paths == [
        'consumer_properties."request.timeout.ms"',
        'consumer_properties."isolation.level"',
        'consumer_properties."sasl.username"',
    ]
    assert "hunter2" not in str(info.value)


def test_unknown_protocol_and_mechanism_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"security\.protocol"):
        client_kwargs({"security.protocol": "QUIC"})
    with pytest.raises(ConfigError, match=r"sasl\.mechanism"):
        client_kwargs({"security.protocol": "SASL_SSL", "sasl.mechanism": "KERBEROS-V"})


def test_secret_values_and_mechanism() -> None:
    props = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "scram-sha-256",
        "sasl.password": "pw",
        "ssl.key.password": "kpw",
        "sasl.username": "user",
    }
    assert sorted(secret_values(props)) == ["kpw", "pw"]
    assert sasl_mechanism(props) == "SCRAM-SHA-256"
    assert sasl_mechanism({"sasl.mechanism": "PLAIN"}) == ""


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def test_ssl_context_from_pem_files_and_hostname_check(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    props = {
        "security.protocol": "SSL",
        "ssl.ca.location": str(cert),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
    }
    kwargs, warnings = client_kwargs(props)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert warnings == ()
    relaxed, _ = client_kwargs({**props, "ssl.endpoint.identification.algorithm": "none"})
    assert relaxed["ssl_context"].check_hostname is False


def test_unreadable_ssl_files_are_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as info:
        client_kwargs({"security.protocol": "SSL", "ssl.ca.location": str(missing)})
    assert list(info.value.problems) == [
        (
            'consumer_properties."ssl.ca.location"',
            f"cannot read {missing}: no such file or directory",
        )
    ]


def test_check_clusters_reports_ignored_keys_and_every_invalid_value(tmp_path: Path) -> None:
    from klag_pipeline.kafka.client_config import check_clusters
    from klag_pipeline.settings.schema import ClusterSettings

    ok = ClusterSettings("a", ("h:1",), consumer_properties={"group.id": "x", "linger.ms": "5"})
    assert check_clusters([ok]) == (
        ("clusters[0].consumer_properties.group.id", "has no effect on an exporter, ignored"),
        ("clusters[0].consumer_properties.linger.ms", "not supported, ignored"),
    )
    bad = ClusterSettings(
        "b",
        ("h:1",),
        consumer_properties={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "OAUTHBEARER",
            "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
            "sasl.oauthbearer.client.secret": "s3cret-value",
            "ssl.ca.location": str(tmp_path / "missing.pem"),
        },
    )
    with pytest.raises(ConfigError) as info:
        check_clusters([ok, bad])
    assert [path for path, _ in info.value.problems] == [
        'clusters[1].consumer_properties."sasl.oauthbearer.client.id"',
        'clusters[1].consumer_properties."ssl.ca.location"',
    ]
    assert "s3cret-value" not in str(info.value)


def test_cli_logs_ignored_consumer_properties_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    import structlog

    from klag_pipeline.cli import run_command

    path = tmp_path / "settings.toml"
    path.write_text(
        '[[clusters]]\nname = "a"\nbootstrap_servers = "h:1"\n'
        '[clusters.consumer_properties]\n"fetch.max.bytes" = "1"\n'
    )
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert run_command(["check", str(path), "--log-format", "json"]) == 0
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("aiokafka").setLevel(logging.NOTSET)  # quieted below debug
        structlog.reset_defaults()
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["path"]) for e in events] == [
        ("consumer_property_ignored", "clusters[0].consumer_properties.fetch.max.bytes")
    ]
