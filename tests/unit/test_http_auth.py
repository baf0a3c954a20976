"""``[exporter.http]`` protection: password hashes, the basic-auth middleware, TLS, and the
whole exporter (``app.serve``) answered over HTTPS by a real client that trusts the test CA."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from devtools.kafka_local import TlsFiles, generate_tls_files
from klag_pipeline import app as app_module
from klag_pipeline.errors import ConfigError
from klag_pipeline.http_auth import BasicAuth, parse_basic, server_ssl_context, verify_password
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    HttpSettings,
    Settings,
)

PASSWORD = "scrape-password-7"
BCRYPT_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
SHA_HASH = hashlib.sha256(b"other-password").hexdigest()
USERS = {"prometheus": BCRYPT_HASH, "grafana": SHA_HASH}


def test_verify_password_formats() -> None:
    assert verify_password(PASSWORD, BCRYPT_HASH)
    assert not verify_password("wrong", BCRYPT_HASH)
    assert verify_password("other-password", SHA_HASH)
    assert verify_password("other-password", SHA_HASH.upper())
    assert verify_password("other-password", "sha256:" + SHA_HASH)
    assert not verify_password("other-passwordX", SHA_HASH)
    assert not verify_password(PASSWORD, "$2b$04$not-a-valid-bcrypt-hash")


def test_successful_checks_are_cached_failures_never() -> None:
    auth = BasicAuth(USERS, cache_size=2)
    assert auth.check("prometheus", PASSWORD)
    assert auth.check("prometheus", PASSWORD)
    assert auth.verifications == 1
    assert not auth.check("prometheus", "wrong")
    assert not auth.check("prometheus", "wrong")
    assert auth.verifications == 3
    assert not auth.check("nobody", PASSWORD)
    assert auth.verifications == 4
    # The cache is bounded: the oldest success is forgotten.
    assert auth.check("grafana", "other-password")
    auth2 = BasicAuth({f"u{i}": SHA_HASH for i in range(3)}, cache_size=2)
    for i in range(3):
        assert auth2.check(f"u{i}", "other-password")
    assert not auth2.cached("u0", "other-password")
    assert auth2.cached("u2", "other-password")


def test_parse_basic_header() -> None:
    good = base64.b64encode(b"user:pa:ss").decode()
    assert parse_basic(f"Basic {good}") == ("user", "pa:ss")
    assert parse_basic(f"basic {good}") == ("user", "pa:ss")
    assert parse_basic("Bearer abc") is None
    assert parse_basic("Basic !!!") is None
    assert parse_basic("Basic " + base64.b64encode(b"nocolon").decode()) is None
    assert parse_basic(None) is None
    assert parse_basic("Basic") is None
    assert parse_basic("Basic ") is None


def test_parse_basic_edges_where_aiohttp_alone_would_answer_differently() -> None:
    # UTF-8, as the challenge announces; aiohttp's latin-1 default would read these bytes as
    # "jÃ¼rgen" and a latin-1 client's b"j\xfcrgen" as "jürgen". The latter is refused instead.
    utf8 = base64.b64encode("jürgen:pässword".encode()).decode()
    assert parse_basic(f"Basic {utf8}") == ("jürgen", "pässword")
    latin1 = base64.b64encode("jürgen:pässword".encode("latin-1")).decode()
    assert parse_basic(f"Basic {latin1}") is None
    # Several spaces after the scheme (RFC 7235 1*SP); the library alone accepts exactly one.
    assert parse_basic("Basic   " + base64.b64encode(b"u:p").decode()) == ("u", "p")
    # A non-ASCII header value is no credentials (it used to escape as a ValueError, a 500).
    assert parse_basic("Basic é") is None
    assert parse_basic("Basic " + base64.b64encode(b":").decode()) == ("", "")


def test_no_tls_without_files_and_unreadable_files_raise(tmp_path: Path) -> None:
    assert server_ssl_context(HttpSettings()) is None
    with pytest.raises(FileNotFoundError):
        server_ssl_context(
            HttpSettings(tls_cert_file=str(tmp_path / "c.pem"), tls_key_file=str(tmp_path / "k"))
        )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_tls_files(tmp_path_factory.mktemp("http-tls"))


def _server_files(tls: TlsFiles, directory: Path) -> tuple[str, str]:
    """Split the PEM keystore (key followed by chain) into the cert and key files we take."""
    text = tls.server_keystore.read_text()
    marker = "-----END PRIVATE KEY-----\n"
    key, chain = text.split(marker, 1)
    (directory / "server.key").write_text(key + marker)
    (directory / "server.pem").write_text(chain)
    return str(directory / "server.pem"), str(directory / "server.key")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def exporter_url(tls: TlsFiles, tmp_path: Path) -> AsyncIterator[str]:
    """The whole exporter (``app.serve``) with TLS and basic auth, on a loopback port."""
    cert, key = _server_files(tls, tmp_path)
    port = _free_port()
    settings = Settings(
        exporter=ExporterSettings(
            http_host="127.0.0.1",
            http_port=port,
            poll_interval=60.0,
            http=HttpSettings(tls_cert_file=cert, tls_key_file=key, basic_auth_users=USERS),
        ),
        # Nothing listens there: the cluster just fails in the background.
        clusters=(ClusterSettings(name="nowhere", bootstrap_servers=("127.0.0.1:9",)),),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(app_module.serve(settings, stop=stop))
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    async with asyncio.timeout(20), aiohttp.ClientSession() as http:
        while True:
            if task.done():
                task.result()
            try:
                async with http.get(url + "/health", ssl=context) as response:
                    if response.status == 401:
                        break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)
    try:
        yield url
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


async def _get(url: str, ca: Path, auth: tuple[str, str] | None) -> tuple[int, str, str]:
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    context = ssl.create_default_context(cafile=str(ca))
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, ssl=context, headers=headers) as response,
    ):
        return response.status, response.headers.get("WWW-Authenticate", ""), await response.text()


async def test_metrics_over_tls_with_basic_auth(exporter_url: str, tls: TlsFiles) -> None:
    status, _, body = await _get(exporter_url + "/metrics", tls.ca_cert, ("prometheus", PASSWORD))
    assert status == 200
    assert "kafka_lag_exporter_up" in body

    status, challenge, body = await _get(exporter_url + "/metrics", tls.ca_cert, None)
    assert status == 401
    assert challenge.startswith("Basic realm=")
    assert "kafka_" not in body

    status, _, _ = await _get(exporter_url + "/metrics", tls.ca_cert, ("prometheus", "wrong"))
    assert status == 401
    status, _, _ = await _get(exporter_url + "/", tls.ca_cert, ("intruder", PASSWORD))
    assert status == 401

    status, _, page = await _get(exporter_url + "/", tls.ca_cert, ("grafana", "other-password"))
    assert status == 200
    # The page shows the settings, with the password hashes redacted.
    assert BCRYPT_HASH not in page
    assert SHA_HASH not in page


async def test_plain_http_and_untrusted_clients_are_refused(
    exporter_url: str, tls: TlsFiles, tmp_path: Path
) -> None:
    plain = exporter_url.replace("https://", "http://") + "/metrics"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(plain) as response:
                await response.read()
    other = generate_tls_files(tmp_path / "other")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(exporter_url + "/metrics", other.ca_cert, ("prometheus", PASSWORD))


async def test_unloadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    settings = Settings(
        exporter=ExporterSettings(
            http_host="127.0.0.1",
            http_port=_free_port(),
            http=HttpSettings(
                tls_cert_file=str(tmp_path / "missing.pem"), tls_key_file=str(tmp_path / "k.pem")
            ),
        ),
        clusters=(ClusterSettings(name="nowhere", bootstrap_servers=("127.0.0.1:9",)),),
    )
    with pytest.raises(ConfigError, match=r"exporter\.http\.tls_cert_file"):
        async with asyncio.timeout(20):
            await app_module.serve(settings, stop=asyncio.Event())


async def test_api_and_page_are_behind_the_same_auth(exporter_url: str, tls: TlsFiles) -> None:
    for path in (
        "/api/v1/clusters",
        "/api/v1/clusters/nowhere/groups",
        "/api/v1/clusters/x/groups/y",
    ):
        status, challenge, body = await _get(exporter_url + path, tls.ca_cert, None)
        assert (status, challenge.startswith("Basic realm=")) == (401, True), path
        assert "clusters" not in body
        assert "error" not in body
    status, _, body = await _get(
        exporter_url + "/api/v1/clusters", tls.ca_cert, ("prometheus", PASSWORD)
    )
    assert status == 200
    assert body == '{"clusters": []}'  # the cluster never answers, so nothing is published
