"""OAUTHBEARER token providers against a real (loopback) aiohttp token endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from klag_pipeline.kafka.oauth import (
    ClientCredentialsTokenProvider,
    FileTokenProvider,
    TokenUnavailable,
    jwt_expiry,
    parse_extensions,
    safe_url,
)

SECRET = "client-secret-value-42"


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}."


@dataclass
class Endpoint:
    url: str
    requests: list[dict[str, str]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    status: int = 200
    expires_in: int | None = 100
    gate: asyncio.Event | None = None
    seen: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint(url="")

    async def token(request: web.Request) -> web.Response:
        state.requests.append(dict(await request.post()))  # type: ignore[arg-type]
        state.authorizations.append(request.headers.get("Authorization", ""))
        state.seen.set()
        if state.gate is not None:
            await state.gate.wait()
        if state.status != 200:
            return web.json_response(
                {"error": "invalid_client", "error_description": SECRET}, status=state.status
            )
        body: dict[str, Any] = {"access_token": f"token-{len(state.requests)}"}
        if state.expires_in is not None:
            body["expires_in"] = state.expires_in
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/oauth/token?tenant=x"
    try:
        yield state
    finally:
        await runner.cleanup()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_client_credentials_request_and_cache(endpoint: Endpoint) -> None:
    clock = FakeClock()
    provider = ClientCredentialsTokenProvider(
        endpoint.url, "klag", SECRET, scope="kafka", extensions={"tenant": "t1"}, clock=clock
    )

    assert await provider.token() == "token-1"
    assert await provider.token() == "token-1"

    assert endpoint.requests == [{"grant_type": "client_credentials", "scope": "kafka"}]
    expected = base64.b64encode(f"klag:{SECRET}".encode()).decode()
    assert endpoint.authorizations == [f"Basic {expected}"]
    assert provider.extensions() == {"tenant": "t1"}

    clock.now += 79  # expires_in=100: still before the 80 % refresh point
    assert await provider.token() == "token-1"
    clock.now += 2
    assert await provider.token() == "token-2"
    assert provider.requests == 2


async def test_concurrent_callers_share_one_request(endpoint: Endpoint) -> None:
    endpoint.gate = asyncio.Event()
    provider = ClientCredentialsTokenProvider(endpoint.url, "klag", SECRET)
    waiting = [asyncio.create_task(provider.token()) for _ in range(5)]
    async with asyncio.timeout(10):
        await endpoint.seen.wait()
    endpoint.gate.set()
    async with asyncio.timeout(10):
        tokens = await asyncio.gather(*waiting)
    assert tokens == ["token-1"] * 5
    assert len(endpoint.requests) == 1


async def test_lifetime_from_jwt_exp_when_expires_in_is_missing(endpoint: Endpoint) -> None:
    assert jwt_expiry(_jwt({"sub": "x", "exp": 1234})) == 1234.0
    assert jwt_expiry("opaque-token") is None
    endpoint.expires_in = None
    clock = FakeClock()
    provider = ClientCredentialsTokenProvider(endpoint.url, "klag", SECRET, clock=clock)
    assert await provider.token() == "token-1"
    clock.now += 3000  # default lifetime 3600 s, refresh at 2880 s
    assert await provider.token() == "token-2"


async def test_refusal_names_the_endpoint_backs_off_and_never_shows_the_secret(
    endpoint: Endpoint,
) -> None:
    endpoint.status = 401
    clock = FakeClock()
    provider = ClientCredentialsTokenProvider(endpoint.url, "klag", SECRET, clock=clock)

    with pytest.raises(TokenUnavailable) as info:
        await provider.token()
    message = str(info.value)
    assert "http://127.0.0.1:" in message
    assert "/oauth/token" in message
    assert "HTTP 401 (invalid_client)" in message
    assert SECRET not in message
    assert "tenant" not in message  # the query string may carry credentials too
    assert info.value.mechanism == "OAUTHBEARER"

    # Within the back-off window the endpoint is not asked again.
    for _ in range(5):
        with pytest.raises(TokenUnavailable):
            await provider.token()
    assert len(endpoint.requests) == 1
    clock.now += 1.5
    with pytest.raises(TokenUnavailable):
        await provider.token()
    assert len(endpoint.requests) == 2


async def test_outage_keeps_serving_a_still_valid_token(endpoint: Endpoint) -> None:
    clock = FakeClock()
    provider = ClientCredentialsTokenProvider(endpoint.url, "klag", SECRET, clock=clock)
    assert await provider.token() == "token-1"
    endpoint.status = 503
    clock.now += 90  # past the refresh point, before expiry
    assert await provider.token() == "token-1"
    clock.now += 20  # expired
    with pytest.raises(TokenUnavailable, match="HTTP 503"):
        await provider.token()


async def test_unreachable_endpoint_is_a_token_error() -> None:
    provider = ClientCredentialsTokenProvider(
        "http://127.0.0.1:9/token", "klag", SECRET, timeout=5.0
    )
    with pytest.raises(TokenUnavailable, match="request failed") as info:
        await provider.token()
    assert SECRET not in str(info.value)


async def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    provider = FileTokenProvider(path)
    with pytest.raises(TokenUnavailable, match="token file"):
        await provider.token()
    path.write_text("first-token\n")
    assert await provider.token() == "first-token"
    path.write_text("second-token-longer\n")
    assert await provider.token() == "second-token-longer"
    path.write_text("  \n")
    with pytest.raises(TokenUnavailable, match="empty"):
        await provider.token()


def test_helpers() -> None:
    assert safe_url("https://user:pw@idp.example:8443/token?secret=1#x") == (
        "https://idp.example:8443/token"
    )
    assert parse_extensions("a=1, b=x=y") == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError, match="key=value"):
        parse_extensions("novalue")
