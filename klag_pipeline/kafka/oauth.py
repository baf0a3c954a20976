"""OAUTHBEARER token providers for aiokafka (SPEC §9).

Two sources besides the unsecured development token of ``sasl.oauthbearer.config``:

- :class:`ClientCredentialsTokenProvider` — an OAuth 2 token endpoint, client-credentials grant
  (``sasl.oauthbearer.token.endpoint.url`` with ``sasl.oauthbearer.client.id`` / ``.secret``),
  as librdkafka's ``sasl.oauthbearer.method=oidc`` and Kafka's ``OAuthBearerLoginCallbackHandler``
  do: client id and secret in an HTTP Basic header, ``grant_type=client_credentials`` and the
  optional scope in the form body.
- :class:`FileTokenProvider` — a token file (``sasl.oauthbearer.token.endpoint.url=file:///…``,
  Kafka's own convention), re-read whenever it changes, so a sidecar can rotate it.

aiokafka asks the provider for a token on every new connection (bootstrap, each broker, each
reconnect). Tokens are therefore cached until 80 % of their lifetime has passed (librdkafka's
refresh point), concurrent callers share one endpoint request, and a failing endpoint is not
asked again before a back-off delay: a broken identity provider must not turn into a request
storm.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote_plus, urlsplit, urlunsplit

from aiokafka.abc import AbstractTokenProvider

from klag_pipeline.errors import KafkaAuthError
from klag_pipeline.kafka.errors import redact

MECHANISM: Final = "OAUTHBEARER"
REFRESH_RATIO: Final = 0.8
DEFAULT_LIFETIME_SECONDS: Final = 3600.0
"""Assumed lifetime of a token that states none (no ``expires_in``, no ``exp`` claim)."""
MIN_BACKOFF_SECONDS: Final = 1.0
MAX_BACKOFF_SECONDS: Final = 60.0
MAX_RESPONSE_BYTES: Final = 1 << 20


class TokenUnavailable(KafkaAuthError):
    """No OAUTHBEARER token could be obtained (endpoint down or refusing, unreadable file)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, mechanism=MECHANISM)


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a JWS-formatted token, if it has one.

    The signature is not checked: the broker validates tokens, the client only needs to know
    when to fetch a new one.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment: what a message may show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_extensions(raw: str) -> dict[str, str]:
    """librdkafka's ``sasl.oauthbearer.extensions``: ``key=value,key2=value2``."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item.strip()!r}")
        out[key] = value
    return out


class _Cached:
    """One token and the times at which to refresh it and after which it is useless."""

    __slots__ = ("expires_at", "refresh_at", "token")

    def __init__(self, token: str, lifetime: float, now: float) -> None:
        self.token = token
        self.refresh_at = now + max(0.0, lifetime) * REFRESH_RATIO
        self.expires_at = now + max(0.0, lifetime)


class ClientCredentialsTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """Tokens from an OAuth 2 token endpoint with the client-credentials grant.

    ``clock`` is wall-clock seconds (token expiry is absolute time). The secret never appears in
    an error message: the endpoint's answer is reduced to its status and OAuth ``error`` code.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = "",
        extensions: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._extensions = MappingProxyType(dict(extensions or {}))
        self._timeout = timeout
        self._clock = clock
        self._cached: _Cached | None = None
        self._lock = asyncio.Lock()
        self._backoff = 0.0
        self._not_before = 0.0
        self._last_error: TokenUnavailable | None = None
        self.requests = 0
        """Token requests sent to the endpoint (for tests and self-observation)."""

    def extensions(self) -> dict[str, str]:
        """SASL extensions sent with the token (``sasl.oauthbearer.extensions``)."""
        return dict(self._extensions)

    async def token(self) -> str:
        now = self._clock()
        cached = self._cached
        if cached is not None and now < cached.refresh_at:
            return cached.token
        async with self._lock:
            # Another caller may have refreshed while this one waited for the lock.
            now = self._clock()
            cached = self._cached
            if cached is not None and now < cached.refresh_at:
                return cached.token
            if now < self._not_before:
                return self._fallback(cached, now)
            try:
                fresh = await self._fetch(now)
            except TokenUnavailable as exc:
                self._backoff = min(
                    MAX_BACKOFF_SECONDS, self._backoff * 2 if self._backoff else MIN_BACKOFF_SECONDS
                )
                self._not_before = self._clock() + self._backoff
                self._last_error = exc
                return self._fallback(cached, self._clock())
            self._backoff = 0.0
            self._not_before = 0.0
            self._last_error = None
            self._cached = fresh
            return fresh.token

    def _fallback(self, cached: _Cached | None, now: float) -> str:
        """The cached token while it is still valid, else the last failure."""
        if cached is not None and now < cached.expires_at:
            return cached.token
        raise self._last_error or TokenUnavailable(
            f"OAUTHBEARER token endpoint {safe_url(self._url)}: no token available"
        )

    def _basic(self) -> str:
        # RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding (Kafka's
        # own client does the same).
        pair = f"{quote_plus(self._client_id)}:{quote_plus(self._client_secret)}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    async def _fetch(self, now: float) -> _Cached:
        # Imported here: the HTTP client (~0.2 s of imports) is needed only when a cluster
        # uses the client-credentials grant, and only once a token is due.
        import aiohttp

        where = f"OAUTHBEARER token endpoint {safe_url(self._url)}"
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        self.requests += 1
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout)) as http,
                http.post(
                    self._url,
                    data=form,
                    headers={"Accept": "application/json", "Authorization": self._basic()},
                ) as response,
            ):
                body = await response.content.read(MAX_RESPONSE_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = redact(str(exc) or type(exc).__name__, (self._client_secret,))
            raise TokenUnavailable(f"{where}: request failed: {detail}") from exc
        try:
            answer: Any = json.loads(body)
        except ValueError:
            answer = None
        if status != 200 or not isinstance(answer, dict):
            code = answer.get("error") if isinstance(answer, dict) else None
            reason = f" ({code})" if isinstance(code, str) and code.isprintable() else ""
            raise TokenUnavailable(f"{where}: HTTP {status}{reason}")
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenUnavailable(f"{where}: the answer has no access_token")
        lifetime = answer.get("expires_in")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            exp = jwt_expiry(token)
            lifetime = exp - now if exp is not None else DEFAULT_LIFETIME_SECONDS
        return _Cached(token, float(lifetime), now)


class FileTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """A token kept in a file by someone else (a sidecar, a mounted secret); re-read on change."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    async def token(self) -> str:
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                text = self._path.read_text(encoding="utf-8").strip()
                if not text:
                    raise TokenUnavailable(f"OAUTHBEARER token file {self._path} is empty")
                self._token, self._stamp = text, stamp
        except OSError as exc:
            raise TokenUnavailable(
                f"OAUTHBEARER token file {self._path}: {exc.strerror or type(exc).__name__}"
            ) from exc
        return self._token
