"""The HTTP endpoints of SPEC §7, on aiohttp.

Handlers only read state: ``/metrics`` is the Prometheus sink's cached body, the probes read the
:class:`~klag_pipeline.status.StatusBoard`, the ``/`` page (:mod:`klag_pipeline.status_page`) and
the JSON API (:mod:`klag_pipeline.http_api`) read it and the
:class:`~klag_pipeline.sinks.snapshots.SnapshotStore`. Nothing here waits on Kafka or on
the pipeline, so probes and scrapes answer at once even while a cycle is stuck.

Protection (TLS, basic auth) plugs in through ``middlewares`` and ``ssl_context``; the handlers
stay unaware of it. Limits against idle, slow and too many clients are in
:mod:`klag_pipeline.http_limits`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ssl import SSLContext

from aiohttp import web
from aiohttp.typedefs import Middleware

from klag_pipeline.errors import KlagError
from klag_pipeline.http_api import SNAPSHOTS_KEY, add_api_routes
from klag_pipeline.http_limits import (
    SEND_TIMEOUT_SECONDS,
    ConnectionGuard,
    GuardedSite,
    HttpLimits,
    install_exhaustion_handler,
    track_requests,
)
from klag_pipeline.sinks.prometheus import PrometheusSink
from klag_pipeline.sinks.snapshots import SnapshotStore
from klag_pipeline.status import StatusBoard
from klag_pipeline.status_page import refresh_seconds, render_page

PROMETHEUS_KEY = web.AppKey("prometheus", PrometheusSink)
STATUS_KEY = web.AppKey("status", StatusBoard)
VERSION_KEY = web.AppKey("version", str)
SETTINGS_VIEW_KEY = web.AppKey("settings_view", str)
SEND_TIMEOUT_KEY = web.AppKey("send_timeout", float)

SHUTDOWN_TIMEOUT_SECONDS = 5.0
"""How long ``cleanup`` lets in-flight requests finish; scrapes are cached lookups."""

_NO_STORE = {"Cache-Control": "no-store"}


async def _metrics(request: web.Request) -> web.StreamResponse:
    body, content_type, encoding = request.app[PROMETHEUS_KEY].render_parts(
        request.headers.get("Accept"), request.headers.get("Accept-Encoding")
    )
    headers = {
        **_NO_STORE,
        "Content-Type": content_type,
        "Vary": "Accept, Accept-Encoding",
    }
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    # Always streamed, inside the handler: the body (tens of MB of text at 20,000 group
    # partitions, kept compressed) is written part by part (a plain-text body is decompressed
    # piece by piece meanwhile, never whole) under a deadline. ``write`` waits for the socket to
    # drain, so a scraper that stops reading would otherwise hold its connection forever; one
    # that goes away mid-body is dropped quietly (aiohttp would log a traceback for it).
    response = web.StreamResponse(headers=headers)
    response.content_length = body.length
    try:
        async with asyncio.timeout(request.app[SEND_TIMEOUT_KEY]):
            await response.prepare(request)
            if request.method != "HEAD":
                for part in body.parts:
                    await response.write(part)
            await response.write_eof()
    except (TimeoutError, ConnectionError):
        if request.transport is not None:
            request.transport.abort()  # close() would keep flushing to a reader that stalled
    return response


def _verdict(ok: bool, reason: str) -> web.Response:
    return web.Response(
        status=200 if ok else 503,
        text=("ok" if ok else reason) + "\n",
        content_type="text/plain",
        headers=_NO_STORE,
    )


async def _health(request: web.Request) -> web.Response:
    return _verdict(*request.app[STATUS_KEY].healthy())


async def _ready(request: web.Request) -> web.Response:
    return _verdict(*request.app[STATUS_KEY].ready())


async def _leader(request: web.Request) -> web.Response:
    status = request.app[STATUS_KEY]
    body: dict[str, object] = {"is_leader": status.is_leader, "identity": status.identity}
    if status.sharding is not None:
        body["sharding"] = status.sharding()
    return web.json_response(body, headers=_NO_STORE)


async def _index(request: web.Request) -> web.Response:
    page = render_page(
        request.app[STATUS_KEY],
        request.app[SNAPSHOTS_KEY],
        version=request.app[VERSION_KEY],
        settings_view=request.app[SETTINGS_VIEW_KEY],
        refresh=refresh_seconds(request.query.get("refresh")),
    )
    return web.Response(text=page, content_type="text/html", headers=_NO_STORE)


def build_app(
    prometheus: PrometheusSink,
    status: StatusBoard,
    *,
    version: str,
    settings_view: Mapping[str, object],
    middlewares: Sequence[Middleware] = (),
    send_timeout: float = SEND_TIMEOUT_SECONDS,
    snapshots: SnapshotStore | None = None,
) -> web.Application:
    """The application serving ``/metrics``, ``/health``, ``/ready``, ``/leader``, ``/`` and the
    JSON API under ``/api/v1/``.

    ``snapshots`` holds what ``/`` and the API show (an empty store when not given: no groups).

    ``settings_view`` must already be redacted; it is shown on ``/``. ``middlewares`` run before
    every handler (the place for authentication). GET routes answer HEAD too; any other method on
    a known path is 405, an unknown path 404 (aiohttp's router does both). ``send_timeout``
    bounds the sending of one ``/metrics`` body.
    """
    app = web.Application(middlewares=tuple(middlewares))
    app[PROMETHEUS_KEY] = prometheus
    app[STATUS_KEY] = status
    app[VERSION_KEY] = version
    app[SETTINGS_VIEW_KEY] = json.dumps(settings_view, indent=2, default=str)
    app[SEND_TIMEOUT_KEY] = send_timeout
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/leader", _leader)
    app.router.add_get("/", _index)
    add_api_routes(app, snapshots if snapshots is not None else SnapshotStore())
    return app


class ListenError(KlagError):
    """The HTTP port cannot be listened on (in use, not permitted, no such address)."""


@dataclass(frozen=True, slots=True)
class HttpServer:
    """A listening server; ``cleanup`` stops listening and finishes in-flight requests."""

    runner: web.AppRunner
    site: web.BaseSite
    guard: ConnectionGuard
    _uninstall: Callable[[], None] = field(repr=False)

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        address = self.runner.addresses[0]
        return int(address[1])

    async def cleanup(self) -> None:
        try:
            await self.runner.cleanup()
        finally:
            self._uninstall()


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: SSLContext | None = None,
    limits: HttpLimits | None = None,
) -> HttpServer:
    """Bind and start serving ``app``; returns once the socket is listening.

    Every connection is subject to ``limits`` (the documented constants unless a test shrinks
    them); descriptor exhaustion on the running loop is logged once per interval instead of a
    traceback per failed ``accept()``. A port that cannot be bound raises :class:`ListenError`
    naming the address.
    """
    guard = ConnectionGuard(limits or HttpLimits())
    # Outermost, so a request counts as in progress whatever the other middlewares decide.
    app.middlewares.insert(0, track_requests)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    site = GuardedSite(runner, host, port, guard, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {_address(host, port)}: {_reason(exc)}") from exc
    except BaseException:
        await runner.cleanup()
        raise
    uninstall = install_exhaustion_handler(asyncio.get_running_loop(), guard)
    return HttpServer(runner, site, guard, uninstall)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if exc.errno:  # asyncio wraps the errno in a long message repeating the address
        return os.strerror(exc.errno).lower()
    return str(exc)
