"""Authentication and transport security against a real broker (SPEC §9, issue 6).

One extra cluster serves every listener: SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER
with Kafka's unsecured JWT validator), SSL (server verification), MTLS (client certificate
required), SASL_SSL (SCRAM), SSL_EXPIRED (an expired server certificate) and, when the MIT KDC is
installed, GSSAPI against a throwaway realm. A scenario is created once over PLAINTEXT; every
mechanism must collect exactly the same lag values as PLAINTEXT, time lag included (the Fetch
sampler goes through the same authenticated client). Every failure must name cluster, broker
and mechanism, never show a secret, set ``up`` to 0 and back off.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import importlib.util
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from devtools.kafka_local import (
    TEST_BROKER_PROPERTIES,
    KafkaCluster,
    KerberosKdc,
    KerberosService,
    SaslListener,
    ScramUser,
    SslListener,
    TlsFiles,
    generate_tls_files,
)
from klag_pipeline.app import Exporter, default_client_factory
from klag_pipeline.commands.check import connect_all
from klag_pipeline.commands.once import collect_once
from klag_pipeline.http import build_app, start_server
from klag_pipeline.kafka import kerberos
from klag_pipeline.kafka.port import ClusterClient, RequestObserver
from klag_pipeline.model import TopicPartition
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.settings.loader import parse_settings
from klag_pipeline.settings.redaction import redact_settings
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    PerformanceSettings,
    Settings,
    ShardingSettings,
)
from klag_pipeline.snapshot import ClusterSnapshot
from tests.integration.pipeline_support import RecordingSink
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

PLAIN_USER = ("alice", "alice-plain-secret")
SCRAM256_USER = ("bob", "bob-scram256-secret")
SCRAM512_USER = ("carol", "carol-scram512-secret")
WRONG_PASSWORD = "definitely-wrong-secret"
HOUR_MS = 3600 * 1000
HAVE_GSSAPI = KerberosKdc.available() and importlib.util.find_spec("gssapi") is not None


@dataclass(frozen=True)
class Secure:
    cluster: KafkaCluster
    tls: TlsFiles
    expired: TlsFiles
    other_ca: TlsFiles
    kdc: KerberosKdc | None
    client_keytab: Path | None
    topic: str
    group: str
    produced_at_ms: int

    def bootstrap(self, listener: str) -> str:
        return self.cluster.listener(listener).bootstrap


@pytest.fixture(scope="module")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KerberosKdc | None]:
    if not HAVE_GSSAPI:
        yield None
        return
    with KerberosKdc(tmp_path_factory.mktemp("kdc")) as running:
        yield running


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, kdc: KerberosKdc | None) -> Iterator[Secure]:
    now = datetime.datetime.now(datetime.UTC)
    expired = generate_tls_files(
        tmp_path_factory.mktemp("expired"),
        server_validity=(now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)),
    )
    other_ca = generate_tls_files(tmp_path_factory.mktemp("other-ca"))
    scram = (
        ScramUser(*SCRAM256_USER, mechanism="SCRAM-SHA-256"),
        ScramUser(*SCRAM512_USER, mechanism="SCRAM-SHA-512"),
    )
    service: KerberosService | None = kdc.service() if kdc is not None else None
    client_keytab = kdc.add_principal(f"klag@{kdc.realm}") if kdc is not None else None
    listeners: list[SaslListener | SslListener] = [
        SaslListener(plain_users=dict([PLAIN_USER]), scram_users=scram, oauthbearer=True),
        SslListener("SSL"),
        SslListener("MTLS", client_auth="required"),
        SaslListener("SASL_SSL", scram_users=scram[1:], tls=True),
        SslListener("SSL_EXPIRED", server_keystore=expired.server_keystore),
    ]
    if service is not None:
        listeners.append(SaslListener("GSSAPI", kerberos=service))
    cluster = KafkaCluster(1, extra_broker_properties=TEST_BROKER_PROPERTIES, listeners=listeners)
    with cluster:
        assert cluster.tls is not None
        produced_at_ms = int(time.time() * 1000) - HOUR_MS
        topic, group = asyncio.run(_scenario(cluster.bootstrap, produced_at_ms))
        yield Secure(
            cluster,
            cluster.tls,
            expired,
            other_ca,
            kdc,
            client_keytab,
            topic,
            group,
            produced_at_ms,
        )


async def _scenario(bootstrap: str, produced_at_ms: int) -> tuple[str, str]:
    """Two partitions, one lagging by 7 records produced an hour ago, one caught up."""
    suffix = base64.b32encode(time.time_ns().to_bytes(8, "big")).decode().rstrip("=").lower()
    topic, group = f"sec-topic-{suffix}", f"sec-group-{suffix}"
    client = await KafkaTestClient.connect(bootstrap)
    try:
        await client.create_topic(topic, partitions=2)
        await client.produce(topic, [Rec(b"p0", timestamp_ms=produced_at_ms)] * 10)
        await client.produce(topic, [Rec(b"p1", partition=1, timestamp_ms=produced_at_ms)] * 4)
        await client.commit(group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 4})
    finally:
        await client.close()
    return topic, group


def _settings(
    secure: Secure,
    listener: str,
    properties: Mapping[str, str],
    *,
    name: str = "secured",
    poll_interval: float = 30.0,
) -> Settings:
    return Settings(
        exporter=ExporterSettings(
            poll_interval=poll_interval,
            staleness_threshold=poll_interval * 3,
            performance=PerformanceSettings(kafka_timeout=10.0),
        ),
        clusters=(
            ClusterSettings(
                name=name,
                bootstrap_servers=tuple(secure.bootstrap(listener).split(",")),
                group_whitelist=(re.compile(f"^{re.escape(secure.group)}$"),),
                topic_whitelist=(re.compile(f"^{re.escape(secure.topic)}$"),),
                consumer_properties=dict(properties),
            ),
        ),
    )


def _values(snapshot: ClusterSnapshot) -> list[tuple[Any, ...]]:
    return sorted(
        (
            row.group,
            row.topic,
            row.partition,
            row.committed,
            row.low,
            row.high,
            row.lag,
            row.messages_lost,
            row.retention_margin,
            row.lag_retention_ratio,
            row.data_loss_detected,
            row.compaction_detected,
            row.lag_seconds is None,
        )
        for row in snapshot.rows
    )


async def _collect(settings: Settings) -> ClusterSnapshot:
    snapshots, errors = await collect_once(settings)
    assert errors == []
    (snapshot,) = snapshots
    return snapshot


@pytest.fixture(scope="module")
def baseline(secure: Secure) -> list[tuple[Any, ...]]:
    snapshot = asyncio.run(_collect(_settings(secure, "PLAINTEXT", {})))
    values = _values(snapshot)
    # The scenario itself: lag 7 then 0, timestamps sampled for the lagging partition.
    assert [(v[2], v[3], v[5], v[6], v[12]) for v in values] == [
        (0, 3, 10, 7, False),
        (1, 4, 4, 0, False),
    ]
    return values


def _assert_same_as_plaintext(
    snapshot: ClusterSnapshot, baseline: list[tuple[Any, ...]], secure: Secure
) -> None:
    assert _values(snapshot) == baseline
    lagging = next(row for row in snapshot.rows if row.lag > 0)
    assert lagging.lag_seconds is not None
    expected = snapshot.observed_at - secure.produced_at_ms / 1000
    assert abs(lagging.lag_seconds - expected) < 30


# ----------------------------------------------------------------------------------------------
# Every mechanism collects exactly what PLAINTEXT collects.


def _sasl(mechanism: str, user: tuple[str, str]) -> dict[str, str]:
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user[0],
        "sasl.password": user[1],
    }


@pytest.mark.parametrize(
    ("mechanism", "user"),
    [("PLAIN", PLAIN_USER), ("SCRAM-SHA-256", SCRAM256_USER), ("SCRAM-SHA-512", SCRAM512_USER)],
)
async def test_sasl_plaintext_collects_the_same_lag(
    secure: Secure, baseline: list[tuple[Any, ...]], mechanism: str, user: tuple[str, str]
) -> None:
    settings = _settings(secure, "SASL_PLAINTEXT", _sasl(mechanism, user))
    _assert_same_as_plaintext(await _collect(settings), baseline, secure)


async def test_ssl_with_server_verification_through_the_settings_file(
    secure: Secure, baseline: list[tuple[Any, ...]]
) -> None:
    text = f"""
[exporter]
poll_interval = "30s"

[[clusters]]
name = "tls"
bootstrap_servers = "{secure.bootstrap("SSL")}"
group_whitelist = ["^{secure.group}$"]
topic_whitelist = ["^{secure.topic}$"]

[clusters.consumer_properties]
"security.protocol" = "SSL"
"ssl.ca.location" = "${{CA_FILE}}"
"ssl.endpoint.identification.algorithm" = "https"
"""
    loaded = parse_settings(text, {"CA_FILE": str(secure.tls.ca_cert)})
    _assert_same_as_plaintext(await _collect(loaded.settings), baseline, secure)


async def test_ssl_with_client_certificate(secure: Secure, baseline: list[tuple[Any, ...]]) -> None:
    props = {
        "security.protocol": "SSL",
        "ssl.ca.location": str(secure.tls.ca_cert),
        "ssl.certificate.location": str(secure.tls.client_cert),
        "ssl.key.location": str(secure.tls.client_key),
    }
    _assert_same_as_plaintext(await _collect(_settings(secure, "MTLS", props)), baseline, secure)


async def test_sasl_ssl_with_scram(secure: Secure, baseline: list[tuple[Any, ...]]) -> None:
    props = {
        **_sasl("SCRAM-SHA-512", SCRAM512_USER),
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(secure.tls.ca_cert),
    }
    _assert_same_as_plaintext(
        await _collect(_settings(secure, "SASL_SSL", props)), baseline, secure
    )


async def test_sharding_coordinates_over_sasl_ssl_and_exports_the_same_lag(
    secure: Secure, baseline: list[tuple[Any, ...]]
) -> None:
    """The sharding group lives on the secured cluster: the membership requests go through the
    same authenticated, encrypted connection setup as collection (docs/scaling.md)."""
    props = {
        **_sasl("SCRAM-SHA-512", SCRAM512_USER),
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(secure.tls.ca_cert),
    }
    base = _settings(secure, "SASL_SSL", props)
    settings = dataclasses.replace(
        base,
        exporter=dataclasses.replace(
            base.exporter,
            sharding=ShardingSettings(
                enabled=True,
                group_id=f"{secure.group}-shards",
                buckets=4,
                session_timeout=6.0,
                heartbeat_interval=1.0,
                identity="secure-replica",
            ),
        ),
    )
    sink = RecordingSink()
    exporter = Exporter(settings, extra_sinks=[sink])
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=10.0))
    try:
        await wait_until(sink.snapshots, within=60, message="a sharded snapshot")
        assert exporter.sharding is not None
        assert exporter.sharding.member.ownership.owned("secured") == frozenset(range(4))
        _assert_same_as_plaintext(sink.snapshots()[0], baseline, secure)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await exporter.close_clients()


def _unsigned_jwt(subject: str, lifetime: int = 600) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + lifetime})}."


async def test_oauthbearer_with_a_token_file(
    secure: Secure, baseline: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    token = tmp_path / "token.jwt"
    token.write_text(_unsigned_jwt("klag-from-file") + "\n")
    props = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.token.endpoint.url": token.as_uri(),
    }
    settings = _settings(secure, "SASL_PLAINTEXT", props)
    _assert_same_as_plaintext(await _collect(settings), baseline, secure)


@pytest.fixture
async def token_endpoint() -> AsyncIterator[tuple[str, list[str]]]:
    """A client-credentials token endpoint issuing unsigned JWTs for the unsecured validator."""
    seen: list[str] = []

    async def issue(request: web.Request) -> web.Response:
        form = await request.post()
        expected = "Basic " + base64.b64encode(b"klag-client:client-secret-123").decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        seen.append(str(form.get("grant_type")))
        return web.json_response(
            {"access_token": _unsigned_jwt("klag-oidc"), "token_type": "Bearer", "expires_in": 600}
        )

    application = web.Application()
    application.router.add_post("/token", issue)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/token", seen
    finally:
        await runner.cleanup()


async def test_oauthbearer_with_a_token_endpoint(
    secure: Secure, baseline: list[tuple[Any, ...]], token_endpoint: tuple[str, list[str]]
) -> None:
    url, seen = token_endpoint
    props = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": url,
        "sasl.oauthbearer.client.id": "klag-client",
        "sasl.oauthbearer.client.secret": "client-secret-123",
    }
    _assert_same_as_plaintext(
        await _collect(_settings(secure, "SASL_PLAINTEXT", props)), baseline, secure
    )
    # Bootstrap, the broker connection and the fetches share one cached token.
    assert seen == ["client_credentials"]


@pytest.mark.skipif(not HAVE_GSSAPI, reason="needs krb5-kdc and the gssapi package")
async def test_gssapi_with_a_keytab(
    secure: Secure, baseline: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert secure.kdc is not None
    assert secure.client_keytab is not None
    monkeypatch.setenv("KRB5_CONFIG", str(secure.kdc.krb5_conf))
    # The login changes these process-wide; monkeypatch restores them after the test.
    monkeypatch.setenv("KRB5CCNAME", "MEMORY:klag-test-before")
    monkeypatch.setenv("KRB5_CLIENT_KTNAME", "/nonexistent")
    monkeypatch.setattr(kerberos, "_active", None)
    props = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "GSSAPI",
        "sasl.kerberos.service.name": "kafka",
        "sasl.kerberos.keytab": str(secure.client_keytab),
        "sasl.kerberos.principal": f"klag@{secure.kdc.realm}",
    }
    _assert_same_as_plaintext(await _collect(_settings(secure, "GSSAPI", props)), baseline, secure)


# ----------------------------------------------------------------------------------------------
# Failures: clear, per cluster, secret-free, up 0, backing off.


class CountingFactory:
    """The real client factory, counting connection attempts (to prove the back-off)."""

    def __init__(self) -> None:
        self.connects = 0

    def __call__(
        self, cluster: ClusterSettings, exporter: ExporterSettings, observer: RequestObserver
    ) -> ClusterClient:
        client = default_client_factory(cluster, exporter, observer)
        real_connect = client.connect

        async def connect() -> None:
            self.connects += 1
            await real_connect()

        client.connect = connect  # type: ignore[method-assign]
        return client


@dataclass
class Failure:
    listener: str
    properties: dict[str, str]
    mechanism: str  # what the message must name
    reason: str  # a regex the message must match
    secrets: tuple[str, ...] = ()


def _failures(secure: Secure) -> dict[str, Failure]:
    ca = str(secure.tls.ca_cert)
    return {
        "wrong password": Failure(
            "SASL_PLAINTEXT",
            _sasl("PLAIN", (PLAIN_USER[0], WRONG_PASSWORD)),
            "SASL mechanism PLAIN",
            r"authentication failed",
            (WRONG_PASSWORD,),
        ),
        "wrong SCRAM password": Failure(
            "SASL_PLAINTEXT",
            _sasl("SCRAM-SHA-512", (SCRAM512_USER[0], WRONG_PASSWORD)),
            "SASL mechanism SCRAM-SHA-512",
            r"authentication failed",
            (WRONG_PASSWORD,),
        ),
        "unknown mechanism": Failure(
            "SASL_SSL",
            {
                **_sasl("PLAIN", PLAIN_USER),
                "security.protocol": "SASL_SSL",
                "ssl.ca.location": ca,
            },
            "SASL mechanism PLAIN",
            r"(?i)unsupported.*mechanism|mechanism.*not (enabled|supported)",
            (PLAIN_USER[1],),
        ),
        "untrusted CA": Failure(
            "SSL",
            {"security.protocol": "SSL", "ssl.ca.location": str(secure.other_ca.ca_cert)},
            "security.protocol SSL",
            r"CERTIFICATE_VERIFY_FAILED|certificate verify failed",
        ),
        "expired certificate": Failure(
            "SSL_EXPIRED",
            {"security.protocol": "SSL", "ssl.ca.location": str(secure.expired.ca_cert)},
            "security.protocol SSL",
            r"certificate has expired",
        ),
        "missing client certificate": Failure(
            "MTLS",
            {"security.protocol": "SSL", "ssl.ca.location": ca},
            "security.protocol SSL",
            r"cannot (connect|bootstrap)",
        ),
    }


FAILURES = (
    "wrong password",
    "wrong SCRAM password",
    "unknown mechanism",
    "untrusted CA",
    "expired certificate",
    "missing client certificate",
)


async def _page(exporter: Exporter, settings: Settings) -> str:
    application = build_app(
        exporter.prometheus,
        exporter.status,
        version="test",
        settings_view=redact_settings(settings),
    )
    server = await start_server(application, "127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.port}/") as response,
        ):
            assert response.status == 200
            return await response.text()
    finally:
        await server.cleanup()


CYCLES = 6


@pytest.mark.parametrize("case", FAILURES)
async def test_failure_is_clear_secret_free_and_backs_off(
    secure: Secure, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    failure = _failures(secure)[case]
    name = f"cluster-{case.replace(' ', '-')}"
    broker = secure.bootstrap(failure.listener)

    def check_message(text: str) -> None:
        assert name in text
        assert broker in text
        assert failure.mechanism in text
        assert re.search(failure.reason, text), text
        for secret in failure.secrets:
            assert secret not in text

    # once: the cluster's error.
    settings = _settings(secure, failure.listener, failure.properties, name=name)
    snapshots, errors = await collect_once(settings)
    assert snapshots == []
    ((cluster, error),) = errors
    assert cluster == name
    check_message(error)

    # check --connect.
    out = io.StringIO()
    assert await connect_all(settings, out) == 1
    check_message(out.getvalue())
    assert f"cluster {name}: FAILED" in out.getvalue()

    # run: several cycles, few connection attempts, up 0, the error on the status page.
    settings = _settings(secure, failure.listener, failure.properties, name=name, poll_interval=1.0)
    factory = CountingFactory()
    exporter = Exporter(settings, client_factory=factory)
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    with structlog.testing.capture_logs() as logs, caplog.at_level(logging.WARNING):
        task = asyncio.create_task(runner.run(stop, shutdown_timeout=5.0))
        try:

            def failed_cycles() -> bool:
                assert not task.done()
                return exporter.status.snapshot()[0].consecutive_failures >= CYCLES

            await wait_until(
                failed_cycles, within=30, interval=0.05, message=f"{CYCLES} failed cycles"
            )
            (status,) = exporter.status.snapshot()
            body, _, _ = exporter.prometheus.render(None, None)
            page = await _page(exporter, settings)
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task
            await exporter.close_clients()

    # 6 cycles at 1 s: the back-off (1 s, 2 s, 4 s after each failed attempt) allows 3
    # attempts (at 0, 2 and 5 s: a failed SASL handshake takes ~0.3 s); without it, 6.
    assert 1 <= factory.connects <= 3, factory.connects
    assert status.successes == 0
    assert b"\nkafka_lag_exporter_up 0\n" in b"\n" + body
    assert f'\nklag_pipeline_cluster_up{{cluster_name="{name}"}} 0\n'.encode() in body
    assert status.last_error is not None
    failed = [
        entry
        for entry in logs
        if entry["event"] == "cluster_cycle_failed" and entry["log_level"] == "warning"
    ]
    assert failed, logs
    check_message(failed[0]["error"])
    assert name in page
    assert broker in page
    everything = json.dumps(logs, default=str) + caplog.text + page + body.decode()
    for secret in failure.secrets:
        assert secret not in everything
    # Failures are logged on change (the error, then "backing off after: <error>"), so at most
    # twice per connection attempt, never once per cycle.
    assert len(failed) <= 2 * factory.connects, [entry["error"] for entry in failed]
