"""Protection of the exporter's own HTTP endpoints (``[exporter.http]``, SPEC §2.2 and §9).

In the style of the Prometheus exporter toolkit's web config: TLS from a certificate and key
file, and HTTP basic authentication against a table of user → password *hash*. Two hash formats
are accepted (the settings loader already rejects anything else): bcrypt (``$2a$``/``$2b$``/
``$2y$``, what ``htpasswd -B`` and the toolkit use) and the hex SHA-256 of the password,
optionally written ``sha256:<hex>``.

A bcrypt check costs tens of milliseconds of CPU by design; Prometheus scrapes every few seconds
with the same credentials, so successful checks are remembered in a small cache keyed by a
SHA-256 of user, password and the configured hash (never the password itself). A wrong password
is never cached and always pays the full price, which is what throttles guessing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

import aiohttp
import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from klag_pipeline.settings.schema import HttpSettings

REALM: Final = "klag-pipeline"
CACHE_SIZE: Final = 64
# Compared against when the user is unknown, so that an unknown user costs as much as a known
# one with a wrong password (no user enumeration by timing).
_DUMMY_BCRYPT: Final = b"$2b$10$POWjzdCNTiUWOTDwsHn3W.eqQCb0jIomyPtRApDlfPAGKN4HWv81q"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (bcrypt or hex SHA-256), in constant time."""
    if hashed.startswith("$2"):
        try:
            return bool(bcrypt.checkpw(password.encode(), hashed.encode()))
        except ValueError:  # a bcrypt variant the library does not implement ($2x$)
            return False
    expected = hashed.strip().lower().removeprefix("sha256:")
    digest = hashlib.sha256(password.encode()).hexdigest()
    return hmac.compare_digest(digest, expected)


class BasicAuth:
    """Checks ``Authorization: Basic`` credentials against ``users`` (user → hash)."""

    def __init__(self, users: Mapping[str, str], *, cache_size: int = CACHE_SIZE) -> None:
        self._users = dict(users)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self.verifications = 0
        """Full hash verifications performed (cache misses), for tests and diagnosis."""

    def _key(self, user: str, password: str, hashed: str) -> bytes:
        return hashlib.sha256(f"{user}\0{password}\0{hashed}".encode()).digest()

    def check(self, user: str, password: str) -> bool:
        """Whether the pair is valid; blocking (bcrypt) on a cache miss."""
        hashed = self._users.get(user)
        key = self._key(user, password, hashed or "")
        if hashed is not None and key in self._cache:
            self._cache.move_to_end(key)
            return True
        self.verifications += 1
        if hashed is None:
            bcrypt.checkpw(password.encode(), _DUMMY_BCRYPT)
            return False
        if not verify_password(password, hashed):
            return False
        self._cache[key] = None
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return True

    def cached(self, user: str, password: str) -> bool:
        """Whether the pair is a remembered success (cheap; no hashing beyond one SHA-256)."""
        hashed = self._users.get(user)
        return hashed is not None and self._key(user, password, hashed) in self._cache

    async def check_async(self, user: str, password: str) -> bool:
        """:meth:`check` without blocking the event loop on bcrypt."""
        if self.cached(user, password):
            return self.check(user, password)
        return await asyncio.to_thread(self.check, user, password)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic …`` header, or None.

    Decoding is aiohttp's :meth:`aiohttp.BasicAuth.decode`, with two choices of ours. UTF-8, not
    its latin-1 default: the challenge announces ``charset="UTF-8"`` (RFC 7617 §2.1), so a client
    that sends latin-1 bytes gets a 401 rather than a match on a different string. And whitespace
    after the scheme is stripped first: RFC 7235 allows several spaces there, the library exactly
    one. Every ValueError (no colon, bad base64, bytes that are not UTF-8, a non-ASCII header)
    means "no credentials".
    """
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    try:
        auth = aiohttp.BasicAuth.decode(f"{scheme} {credentials.strip()}", encoding="utf-8")
    except ValueError:  # includes UnicodeDecodeError / UnicodeEncodeError
        return None
    return auth.login, auth.password


def basic_auth_middleware(users: Mapping[str, str]) -> Middleware:
    """An aiohttp middleware answering 401 (with ``WWW-Authenticate``) unless the request carries
    valid basic-auth credentials. Every path is protected, probes included, as in the toolkit."""
    auth = BasicAuth(users)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        credentials = parse_basic(request.headers.get("Authorization"))
        if credentials is None or not await auth.check_async(*credentials):
            return web.Response(
                status=401,
                text="Unauthorized\n",
                headers={
                    "WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"',
                    "Cache-Control": "no-store",
                },
            )
        return await handler(request)

    return middleware


def server_ssl_context(settings: HttpSettings) -> ssl.SSLContext | None:
    """The TLS context for the HTTP server, or None when TLS is not configured.

    TLS 1.2 is the minimum, as in the exporter toolkit. Raises OSError / ssl.SSLError when the
    files cannot be loaded (the caller reports it at start-up).
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key would make OpenSSL prompt on the terminal for a password at start-up;
    # an empty password turns that into a load error.
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file, password=lambda: b"")
    return context


def middlewares(settings: HttpSettings) -> tuple[Middleware, ...]:
    """The middlewares ``[exporter.http]`` asks for (none when basic auth is off)."""
    if not settings.basic_auth_users:
        return ()
    return (basic_auth_middleware(settings.basic_auth_users),)
