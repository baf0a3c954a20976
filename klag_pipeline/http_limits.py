"""Connection limits that keep ``/metrics`` and the probes answering under hostile clients.

aiohttp bounds idle keep-alive connections (``keepalive_timeout``) and header sizes, but it has
no deadline for *receiving* a request header (a client dripping one header byte at a time holds
its connection forever), no cap on concurrent connections, and asyncio logs a full traceback for
every ``accept()`` that fails with EMFILE (up to the listen backlog per loop pass, i.e. thousands
of lines a second). What is missing is added here, at the connection (protocol) level, with
public aiohttp pieces: a :class:`~aiohttp.web_protocol.RequestHandler` subclass that knows when
it is waiting for a request, a middleware that tells it when a request is being handled, a
:class:`ConnectionGuard` that caps the connections, and a loop exception handler that turns
descriptor exhaustion into one rate-limited log line and frees descriptors.

The values are constants, not settings: they are what an operator expects of a metrics
endpoint, documented in docs/decisions.md ("HTTP server limits").
"""

from __future__ import annotations

import asyncio
import errno
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

HEADER_TIMEOUT_SECONDS: Final = 10.0
"""A new connection must deliver a complete request header within this time of connecting, and
a kept-alive connection within this time of the first byte of its next request (slowloris)."""
KEEPALIVE_TIMEOUT_SECONDS: Final = 75.0
"""An idle connection between requests is closed after this (nginx's default); above the usual
scrape intervals (15–60 s), so Prometheus reuses its connection."""
MAX_CONNECTIONS: Final = 100
"""Open connections at most; far above what scrapers and probes need, far below common
descriptor limits (256 leaves room for Kafka connections and files)."""
SEND_TIMEOUT_SECONDS: Final = 60.0
"""A ``/metrics`` body must be sent within this (a scraper that stops reading is cut off)."""
LOG_INTERVAL_SECONDS: Final = 30.0
"""Repeated warnings about hostile or too many clients are logged at most this often."""

log = structlog.get_logger(__name__)

_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The limits of one server; the defaults are the documented values (tests shrink them)."""

    header_timeout: float = HEADER_TIMEOUT_SECONDS
    keepalive_timeout: float = KEEPALIVE_TIMEOUT_SECONDS
    max_connections: int = MAX_CONNECTIONS
    log_interval: float = LOG_INTERVAL_SECONDS


class Throttle:
    """Lets one report through per ``interval`` and counts the ones it held back."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next_at: float | None = None
        self._suppressed = 0

    def hit(self) -> int | None:
        """Record one occurrence. Returns None when it must not be reported, else the number of
        occurrences suppressed since the previous report (0 for the first)."""
        now = self._clock()
        if self._next_at is not None and now < self._next_at:
            self._suppressed += 1
            return None
        self._next_at = now + self._interval
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


class ConnectionGuard:
    """Tracks the open connections; over the cap, the one idle longest is closed.

    "Idle" means not inside a request handler: waiting for a request, or still receiving its
    header. Closing the oldest idle connection (rather than refusing the newcomer) keeps a
    scrape or probe getting through while hundreds of silent connections are open; a connection
    inside a handler is never closed for the cap. When every connection is busy, the newcomer
    itself is the oldest idle one and is closed at once.
    """

    def __init__(self, limits: HttpLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._open: dict[GuardedHandler, None] = {}
        self._idle: dict[GuardedHandler, None] = {}  # insertion order: idle longest first
        self._over_cap = Throttle(limits.log_interval, clock)
        self._header_timeouts = Throttle(limits.log_interval, clock)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def admit(self, conn: GuardedHandler) -> None:
        self._open[conn] = None
        self._idle[conn] = None
        if len(self._open) > self.limits.max_connections:
            victim = next(iter(self._idle))
            self._close(victim)
            suppressed = self._over_cap.hit()
            if suppressed is not None:
                log.warning(
                    "http_connection_limit_reached",
                    max_connections=self.limits.max_connections,
                    action="closed the connection idle longest",
                    suppressed=suppressed,
                )

    def busy(self, conn: GuardedHandler) -> None:
        self._idle.pop(conn, None)

    def idle(self, conn: GuardedHandler) -> None:
        if conn in self._open:
            self._idle.pop(conn, None)
            self._idle[conn] = None

    def forget(self, conn: GuardedHandler) -> None:
        self._open.pop(conn, None)
        self._idle.pop(conn, None)

    def header_timed_out(self, conn: GuardedHandler) -> None:
        peer = conn.peername  # read before closing: a closed handler has no transport
        self._close(conn)
        suppressed = self._header_timeouts.hit()
        # Debug: browsers open speculative connections and leave them silent, so one timeout
        # is no incident; many silent clients show up as the cap being reached.
        if suppressed is not None:
            log.debug(
                "http_header_timeout",
                timeout=self.limits.header_timeout,
                peer=str(peer),
                suppressed=suppressed,
            )

    def shed_idle(self) -> int:
        """Close every idle connection (descriptors ran out); returns how many."""
        victims = list(self._idle)
        for conn in victims:
            self._close(conn)
        return len(victims)

    def _close(self, conn: GuardedHandler) -> None:
        # Forgotten before closing: the transport reports connection_lost only on a later loop
        # pass, and the count must drop now for the next admission.
        self.forget(conn)
        conn.force_close()


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol plus a request-header deadline and the guard's bookkeeping.

    aiohttp's keep-alive timer only runs between requests and closes idle connections; nothing
    limits the time a client takes to send a header, so the deadline is armed here: when the
    connection is made, and on the first byte after a response. The request middleware disarms
    it when a complete request reaches the handler.
    """

    __slots__ = ("_guard", "_header_timer", "_in_request")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # a silent new connection gets the header deadline too
        self._guard.admit(self)

    def data_received(self, data: bytes) -> None:
        # aiohttp calls this with b"" itself when it resumes reading: not a client's byte.
        if data and not self._in_request and self._header_timer is None:
            self._arm()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._guard.forget(self)
        super().connection_lost(exc)

    def request_started(self) -> None:
        self._disarm()
        self._in_request = True
        self._guard.busy(self)

    def request_finished(self) -> None:
        self._in_request = False
        self._guard.idle(self)

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._guard.limits.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if not self._in_request:
            self._guard.header_timed_out(self)


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks the connection busy while a handler runs (outermost middleware)."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):
        return await handler(request)
    protocol.request_started()
    try:
        return await handler(request)
    finally:
        protocol.request_finished()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are :class:`GuardedHandler` protocols.

    ``web.TCPSite`` always uses aiohttp's own handler class and passes no TLS handshake timeout
    (asyncio's default is 60 s, during which a connection is invisible to the guard); this site
    is ``TCPSite.start`` with both set.
    """

    __slots__ = ("_guard", "_handler_kwargs", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        ssl_context: SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._guard = guard
        # One access-log line per scrape and probe would drown the lifecycle logs (DESIGN: INFO
        # only for lifecycle and state changes).
        self._handler_kwargs: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": guard.limits.keepalive_timeout,
        }

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard, kwargs = self._guard, self._handler_kwargs

        def protocol() -> GuardedHandler:
            return GuardedHandler(server, guard, loop=loop, **kwargs)

        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=guard.limits.header_timeout if self._ssl_context else None,
        )


def install_exhaustion_handler(
    loop: asyncio.AbstractEventLoop, guard: ConnectionGuard
) -> Callable[[], None]:
    """Handle descriptor/buffer exhaustion reported to the loop; returns the uninstaller.

    asyncio reports a failed ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) to the loop's
    exception handler once per attempt — up to the listen backlog per loop pass — and retries
    after 1 s. Here each report closes the idle HTTP connections (the descriptors we can free;
    a scrape then gets in on the retry) and is logged as one ``resources_exhausted`` line at most
    every ``log_interval``, with the number of repeats held back. Everything else goes to the
    previous handler.
    """
    previous = loop.get_exception_handler()
    throttle = Throttle(guard.limits.log_interval, loop.time)
    shed_since_report = 0

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal shed_since_report
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _EXHAUSTED):
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        open_connections = guard.open_count
        shed_since_report += guard.shed_idle()
        suppressed = throttle.hit()
        if suppressed is None:
            return
        log.error(
            "resources_exhausted",
            error=exc,
            where=str(context.get("message", "")).splitlines()[0],
            open_files_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            http_connections=open_connections,
            idle_connections_closed=shed_since_report,
            suppressed=suppressed,
        )
        shed_since_report = 0

    loop.set_exception_handler(handle)

    def uninstall() -> None:
        if loop.get_exception_handler() is handle:
            loop.set_exception_handler(previous)

    return uninstall
