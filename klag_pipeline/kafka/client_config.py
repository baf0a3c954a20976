"""librdkafka-style ``consumer_properties`` (SPEC §2.2) → ``AIOKafkaClient`` keyword arguments.

klag-exporter users already have these keys in their configs, so the names and values follow
librdkafka. Every key is either mapped, consumed by the adapter itself (``isolation.level``,
the Kerberos keytab), or named in a warning: nothing is dropped silently. Invalid values raise
:class:`ConfigError` listing every problem, each with the offending key.

OAUTHBEARER tokens come from (first match): ``sasl.oauthbearer.token.endpoint.url`` — an
``http(s)://`` token endpoint with the client-credentials grant, or a ``file://`` token file —
else librdkafka's unsecured development token built from ``sasl.oauthbearer.config``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from aiokafka.abc import AbstractTokenProvider

from klag_pipeline.errors import ConfigError
from klag_pipeline.kafka.client_tls import ssl_context
from klag_pipeline.kafka.kerberos import KerberosIdentity
from klag_pipeline.kafka.oauth import (
    ClientCredentialsTokenProvider,
    FileTokenProvider,
    parse_extensions,
)
from klag_pipeline.kafka.protocol import READ_COMMITTED, READ_UNCOMMITTED
from klag_pipeline.settings.loader.sections import join_path
from klag_pipeline.settings.paths import unreadable
from klag_pipeline.settings.schema import ClusterSettings

_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
_INT_KEYS: Final = {
    "request.timeout.ms": "request_timeout_ms",
    "metadata.max.age.ms": "metadata_max_age_ms",
    "retry.backoff.ms": "retry_backoff_ms",
    "connections.max.idle.ms": "connections_max_idle_ms",
}
# Consumer-side knobs that mean nothing to a read-only exporter (it never joins a group).
_NO_EFFECT: Final = frozenset(
    {
        "group.id",
        "group.protocol",
        "auto.offset.reset",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "enable.partition.eof",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "partition.assignment.strategy",
        "client.rack",
        "socket.keepalive.enable",
    }
)
_CONSUMED: Final = frozenset(
    {
        "client.id",
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "ssl.endpoint.identification.algorithm",
        "sasl.kerberos.service.name",
        "sasl.kerberos.domain.name",
        "sasl.kerberos.keytab",
        "sasl.kerberos.principal",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.method",
        "sasl.oauthbearer.grant.type",
        "sasl.oauthbearer.token.endpoint.url",
        "sasl.oauthbearer.client.id",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.scope",
        "sasl.oauthbearer.extensions",
        "isolation.level",
        *_INT_KEYS,
    }
)
_SECRET_MARKERS: Final = ("password", "secret", "sasl.oauthbearer", "token")


def isolation_level(properties: Mapping[str, str]) -> int:
    """READ_COMMITTED (1) when ``isolation.level=read_committed``, else READ_UNCOMMITTED (0)."""
    value = properties.get("isolation.level", "").strip().lower()
    return READ_COMMITTED if value == "read_committed" else READ_UNCOMMITTED


def secret_values(properties: Mapping[str, str]) -> tuple[str, ...]:
    """Values that must never appear in a message (passwords, secrets, tokens)."""
    return tuple(
        value
        for key, value in properties.items()
        if value and any(marker in key.lower() for marker in _SECRET_MARKERS)
    )


def sasl_mechanism(properties: Mapping[str, str]) -> str:
    """The configured SASL mechanism ("" unless a SASL security protocol is used)."""
    protocol = properties.get("security.protocol", "PLAINTEXT").strip().upper()
    if not protocol.startswith("SASL_"):
        return ""
    raw = properties.get("sasl.mechanism", properties.get("sasl.mechanisms", "PLAIN"))
    return raw.strip().upper()


class UnsecuredJwtTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """librdkafka's default OAUTHBEARER token: an unsigned JWS built from
    ``sasl.oauthbearer.config`` (``principal=<name> [scope=<s>] [lifeSeconds=<n>]``).

    Accepted by brokers using Kafka's unsecured validator (development and test clusters).
    """

    def __init__(
        self,
        principal: str,
        scope: str = "",
        life_seconds: int = 3600,
        extensions: Mapping[str, str] | None = None,
    ) -> None:
        self._principal = principal
        self._scope = scope
        self._life = life_seconds
        self._extensions = dict(extensions or {})

    def extensions(self) -> dict[str, str]:
        """SASL extensions sent with the token (``sasl.oauthbearer.extensions``)."""
        return dict(self._extensions)

    async def token(self) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": self._principal, "iat": now, "exp": now + self._life}
        if self._scope:
            claims["scope"] = self._scope
        return f"{_b64(json.dumps({'alg': 'none'}))}.{_b64(json.dumps(claims))}."


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _parse_oauth_config(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw.split():
        name, sep, value = item.partition("=")
        if sep:
            out[name] = value
    return out


def client_kwargs(properties: Mapping[str, str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Map ``properties`` to ``AIOKafkaClient`` kwargs; also return a warning per ignored key.

    Raises ConfigError for values that cannot work (unknown protocol or mechanism, missing
    credentials, unreadable certificate files), listing all of them.
    """
    kwargs: dict[str, Any] = {}
    warnings: list[str] = []
    problems: list[tuple[str, str]] = []

    for key in sorted(properties):
        if key in _CONSUMED:
            continue
        if key in _NO_EFFECT:
            warnings.append(f"consumer_properties.{key}: has no effect on an exporter, ignored")
        elif key.startswith("sasl.kerberos."):
            warnings.append(
                f"consumer_properties.{key}: not supported (credentials come from "
                "sasl.kerberos.keytab / sasl.kerberos.principal or the ticket cache), ignored"
            )
        elif key.startswith("sasl.oauthbearer."):
            warnings.append(
                f"consumer_properties.{key}: not supported (tokens come from "
                "sasl.oauthbearer.token.endpoint.url or sasl.oauthbearer.config), ignored"
            )
        else:
            warnings.append(f"consumer_properties.{key}: not supported, ignored")

    if "client.id" in properties:
        kwargs["client_id"] = properties["client.id"]
    for key, name in _INT_KEYS.items():
        if key in properties:
            try:
                value = int(properties[key])
                if value <= 0:
                    raise ValueError
            except ValueError:
                problems.append((key, f"must be a positive integer, got {properties[key]!r}"))
            else:
                kwargs[name] = value

    level = properties.get("isolation.level")
    if level is not None and level.strip().lower() not in ("read_committed", "read_uncommitted"):
        problems.append(("isolation.level", "must be read_committed or read_uncommitted"))

    protocol = properties.get("security.protocol", "PLAINTEXT").strip().upper()
    if protocol not in _PROTOCOLS:
        problems.append(("security.protocol", f"must be one of {', '.join(_PROTOCOLS)}"))
        protocol = "PLAINTEXT"
    kwargs["security_protocol"] = protocol

    if protocol.startswith("SASL_"):
        _sasl(properties, kwargs, problems)
    elif any(k.startswith("sasl.") for k in properties):
        warnings.append(
            f"consumer_properties.sasl.*: ignored because security.protocol is {protocol}"
        )

    if protocol in ("SSL", "SASL_SSL"):
        context = ssl_context(properties, problems)
        if context is not None:
            kwargs["ssl_context"] = context
    elif any(k.startswith("ssl.") for k in properties):
        warnings.append(
            f"consumer_properties.ssl.*: ignored because security.protocol is {protocol}"
        )

    if problems:
        raise ConfigError([(join_path("consumer_properties", key), msg) for key, msg in problems])
    return kwargs, tuple(warnings)


def kerberos_identity(properties: Mapping[str, str]) -> KerberosIdentity | None:
    """The keytab login GSSAPI needs, or None (not GSSAPI, or the ticket cache is used)."""
    if sasl_mechanism(properties) != "GSSAPI":
        return None
    keytab = properties.get("sasl.kerberos.keytab", "").strip()
    if not keytab:
        return None
    principal = properties.get("sasl.kerberos.principal", "").strip() or None
    return KerberosIdentity(keytab=keytab, principal=principal)


def _sasl(
    properties: Mapping[str, str], kwargs: dict[str, Any], problems: list[tuple[str, str]]
) -> None:
    mechanism = sasl_mechanism(properties)
    if mechanism not in _MECHANISMS:
        problems.append(("sasl.mechanism", f"must be one of {', '.join(_MECHANISMS)}"))
        return
    kwargs["sasl_mechanism"] = mechanism
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for key in ("sasl.username", "sasl.password"):
            if not properties.get(key):
                problems.append((key, f"required for SASL {mechanism}"))
        kwargs["sasl_plain_username"] = properties.get("sasl.username")
        kwargs["sasl_plain_password"] = properties.get("sasl.password")
    elif mechanism == "GSSAPI":
        kwargs["sasl_kerberos_service_name"] = properties.get("sasl.kerberos.service.name", "kafka")
        if "sasl.kerberos.domain.name" in properties:
            kwargs["sasl_kerberos_domain_name"] = properties["sasl.kerberos.domain.name"]
        keytab = properties.get("sasl.kerberos.keytab", "").strip()
        reason = unreadable(keytab) if keytab else None
        if reason is not None:
            problems.append(("sasl.kerberos.keytab", f"cannot read {keytab}: {reason}"))
        elif properties.get("sasl.kerberos.principal") and not keytab:
            problems.append(
                ("sasl.kerberos.principal", "needs sasl.kerberos.keytab (or omit it and kinit)")
            )
    else:
        _oauthbearer(properties, kwargs, problems)


def _oauthbearer(
    properties: Mapping[str, str], kwargs: dict[str, Any], problems: list[tuple[str, str]]
) -> None:
    extensions: dict[str, str] = {}
    if properties.get("sasl.oauthbearer.extensions"):
        try:
            extensions = parse_extensions(properties["sasl.oauthbearer.extensions"])
        except ValueError as exc:
            problems.append(("sasl.oauthbearer.extensions", str(exc)))
    method = properties.get("sasl.oauthbearer.method", "").strip().lower()
    if method not in ("", "default", "oidc"):
        problems.append(("sasl.oauthbearer.method", "must be default or oidc"))
    grant = properties.get("sasl.oauthbearer.grant.type", "client_credentials").strip()
    if grant != "client_credentials":
        problems.append(("sasl.oauthbearer.grant.type", "only client_credentials is supported"))
    url = properties.get("sasl.oauthbearer.token.endpoint.url", "").strip()
    if url:
        _token_endpoint(properties, url, extensions, kwargs, problems)
        return
    if method == "oidc":
        problems.append(("sasl.oauthbearer.token.endpoint.url", "required for method oidc"))
        return
    config = _parse_oauth_config(properties.get("sasl.oauthbearer.config", ""))
    principal = config.get("principal", "")
    if not principal:
        problems.append(
            (
                "sasl.oauthbearer.config",
                "OAUTHBEARER needs sasl.oauthbearer.token.endpoint.url, or principal=<name> "
                "here for an unsecured development token",
            )
        )
        return
    try:
        life = int(config.get("lifeSeconds", "3600"))
    except ValueError:
        problems.append(("sasl.oauthbearer.config", "lifeSeconds must be an integer"))
        return
    provider = UnsecuredJwtTokenProvider(principal, config.get("scope", ""), life, extensions)
    kwargs["sasl_oauth_token_provider"] = provider


def _token_endpoint(
    properties: Mapping[str, str],
    url: str,
    extensions: Mapping[str, str],
    kwargs: dict[str, Any],
    problems: list[tuple[str, str]],
) -> None:
    key = "sasl.oauthbearer.token.endpoint.url"
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path:
            problems.append((key, "a token file is file:///absolute/path"))
        elif (reason := unreadable(path)) is not None:
            problems.append((key, f"cannot read token file {path}: {reason}"))
        else:
            kwargs["sasl_oauth_token_provider"] = FileTokenProvider(path)
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append((key, "must be an http(s):// token endpoint or a file:// token file"))
        return
    missing = False
    for name in ("sasl.oauthbearer.client.id", "sasl.oauthbearer.client.secret"):
        if not properties.get(name):
            problems.append((name, "required with a token endpoint (client-credentials grant)"))
            missing = True
    if missing:
        return
    kwargs["sasl_oauth_token_provider"] = ClientCredentialsTokenProvider(
        url,
        properties["sasl.oauthbearer.client.id"],
        properties["sasl.oauthbearer.client.secret"],
        scope=properties.get("sasl.oauthbearer.scope", ""),
        extensions=extensions,
    )


def check_clusters(clusters: Sequence[ClusterSettings]) -> tuple[tuple[str, str], ...]:
    """Validate every cluster's ``consumer_properties`` at start-up, without any network I/O.

    Returns (dotted path, message) for each ignored property, to be logged once. Raises one
    ConfigError listing the invalid values of all clusters (``clusters[i].consumer_properties.…``).
    """
    warnings: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    for index, cluster in enumerate(clusters):
        prefix = f"clusters[{index}]."
        try:
            _, found = client_kwargs(cluster.consumer_properties)
        except ConfigError as exc:
            problems.extend((prefix + path, message) for path, message in exc.problems)
            continue
        for warning in found:
            path, _, message = warning.partition(": ")
            warnings.append((prefix + path, message))
    if problems:
        raise ConfigError(problems)
    return tuple(warnings)
