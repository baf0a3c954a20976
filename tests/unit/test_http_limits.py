"""The HTTP server limits (klag_pipeline.http_limits) on a real server and real sockets.

The limits are shrunk (tenths of seconds, five connections) so each behaviour is seen in about a
second; the documented values are exercised on the real process in test_http_hardening.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from devtools.kafka_local import generate_tls_files
from klag_pipeline.http import HttpServer, build_app, start_server
from klag_pipeline.http_auth import server_ssl_context
from klag_pipeline.http_limits import HttpLimits, Throttle
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.settings.schema import HttpSettings
from klag_pipeline.sinks.prometheus import PrometheusSink
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry.self_metrics import SelfMetrics
from tests.support.kafka import wait_until
from tests.unit.test_http import snapshot
from tests.unit.test_http_auth import _server_files

LIMITS = HttpLimits(header_timeout=0.5, keepalive_timeout=1.5, max_connections=5)
SEND_TIMEOUT = 0.5
SLOW_HANDLER_SECONDS = 1.0  # twice the header timeout
MARGIN = 1.5  # scheduling slack on a busy machine
REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_throttle_reports_once_per_interval_with_the_suppressed_count() -> None:
    clock = FakeClock()
    throttle = Throttle(30.0, clock.monotonic)
    assert throttle.hit() == 0  # the first occurrence is reported at once
    assert [throttle.hit() for _ in range(1000)] == [None] * 1000
    clock.advance(29.9)
    assert throttle.hit() is None
    clock.advance(0.1)
    assert throttle.hit() == 1001  # everything held back since the last report
    clock.advance(10)
    assert throttle.hit() is None  # the interval restarts at each report
    clock.advance(100)
    assert throttle.hit() == 1  # quiet for long: reported at once, with what was held back


@dataclass
class Server:
    server: HttpServer
    sink: PrometheusSink

    @property
    def port(self) -> int:
        return self.server.port

    async def connect(self, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, Any]:
        if rcvbuf is None:
            return await asyncio.open_connection("127.0.0.1", self.port)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        return await asyncio.open_connection(sock=sock, limit=rcvbuf)

    async def get(self, path: str) -> int:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as response,
        ):
            await response.read()
            return response.status


SLOW_HANDLERS_ENTERED = [0]  # how many /slow requests have reached their handler


async def _slow(request: web.Request) -> web.Response:
    SLOW_HANDLERS_ENTERED[0] += 1
    await asyncio.sleep(SLOW_HANDLER_SECONDS)
    return web.Response(text="done")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with _server(LIMITS) as running:
        yield running


# The cap test holds silent connections open while it checks them: a header timeout long enough
# that only the cap can close them, however slow a loaded machine schedules the test.
CAP_LIMITS = HttpLimits(header_timeout=30.0, keepalive_timeout=30.0, max_connections=5)


@pytest.fixture
async def capped_server() -> AsyncIterator[Server]:
    async with _server(CAP_LIMITS) as running:
        yield running


@contextlib.asynccontextmanager
async def _server(limits: HttpLimits) -> AsyncIterator[Server]:
    status = StatusBoard(
        ["dr"], staleness_threshold=90.0, poll_interval=30.0, clock=FakeClock(), identity="x"
    )
    sink = PrometheusSink("partition", status, SelfMetrics())
    app = build_app(sink, status, version="1", settings_view={}, send_timeout=SEND_TIMEOUT)
    app.router.add_get("/slow", _slow)
    running = await start_server(app, "127.0.0.1", 0, limits=limits)
    try:
        yield Server(running, sink)
    finally:
        await running.cleanup()


async def seconds_until_closed(reader: asyncio.StreamReader, within: float) -> float:
    """Reads (and drops) until the server closes the connection; fails after ``within``."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while True:
            try:
                if not await reader.read(65536):
                    break
            except ConnectionResetError:
                break
    return time.monotonic() - start


async def is_open(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(0.05):
            return bool(await reader.read(65536))  # b"": closed
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


async def test_a_client_dripping_its_header_is_cut_after_the_header_timeout(
    server: Server,
) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /health HTTP/1.1\r\n")

    async def drip() -> None:
        for _ in range(100):  # bounded: 10 s at most
            writer.write(b"X-Drip: 1\r\n")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        elapsed = await seconds_until_closed(reader, LIMITS.header_timeout + MARGIN)
    finally:
        dripping.cancel()
        writer.close()
    assert elapsed >= LIMITS.header_timeout - 0.1
    assert await server.get("/health") == 200


async def test_a_silent_connection_is_cut_after_the_header_timeout(server: Server) -> None:
    reader, writer = await server.connect()
    try:
        elapsed = await seconds_until_closed(reader, LIMITS.header_timeout + MARGIN)
    finally:
        writer.close()
    assert elapsed >= LIMITS.header_timeout - 0.1


async def test_a_kept_alive_connection_lives_until_the_keepalive_timeout(server: Server) -> None:
    reader, writer = await server.connect()
    try:
        writer.write(REQUEST)
        assert (await reader.readuntil(b"ok\n")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(LIMITS.header_timeout + 0.3)  # idle, not sending a header: kept
        assert await is_open(reader)
        writer.write(REQUEST)  # and still usable
        assert (await reader.readuntil(b"ok\n")).startswith(b"HTTP/1.1 200")
        elapsed = await seconds_until_closed(reader, LIMITS.keepalive_timeout + MARGIN)
    finally:
        writer.close()
    assert elapsed >= LIMITS.keepalive_timeout - 0.1


async def test_a_slow_handler_is_not_cut_by_the_header_timeout(server: Server) -> None:
    assert LIMITS.header_timeout < SLOW_HANDLER_SECONDS
    assert await server.get("/slow") == 200


async def test_over_the_cap_the_connection_idle_longest_is_closed(capped_server: Server) -> None:
    server = capped_server
    entered = SLOW_HANDLERS_ENTERED[0]
    busy = asyncio.create_task(server.get("/slow"))  # inside a handler: never closed for the cap

    async def busy_in_handler() -> bool:
        return SLOW_HANDLERS_ENTERED[0] > entered

    await wait_until(busy_in_handler, within=5, interval=0.02, message="/slow in its handler")
    with structlog.testing.capture_logs() as logs:
        silent = [await server.connect() for _ in range(CAP_LIMITS.max_connections + 2)]

        async def three_closed() -> bool:
            return [await is_open(reader) for reader, _ in silent[:3]] == [False] * 3

        # The server has admitted (and evicted for) all of them.
        await wait_until(three_closed, within=5, interval=0.02, message="three evicted")
    try:
        states = [await is_open(reader) for reader, _ in silent]
        # 1 busy + 7 silent = 8 > 5: the three silent ones that came first are closed.
        assert states == [False] * 3 + [True] * 4
        # One warning for the three closings (the next one at most LOG_INTERVAL later).
        assert [(e["event"], e["suppressed"]) for e in logs] == [
            ("http_connection_limit_reached", 0)
        ]
        assert await server.get("/health") == 200  # evicts the next silent one, gets in
        assert [await is_open(reader) for reader, _ in silent[3:]] == [False] + [True] * 3
        assert await busy == 200
    finally:
        for _, writer in silent:
            writer.close()


async def test_a_scraper_that_stops_reading_is_cut_after_the_send_timeout(
    server: Server,
) -> None:
    base = snapshot("dr", "g", 5)
    rows = tuple(
        base.rows[0]._replace(group=f"group-{i:06d}-{'x' * 40}", partition=i % 50)
        for i in range(8000)
    )
    server.sink.apply(dataclasses.replace(base, rows=rows))  # ~8 MB: more than socket buffers
    reader, writer = await server.connect(rcvbuf=4096)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        await asyncio.sleep(SEND_TIMEOUT + MARGIN)  # reading nothing meanwhile
        received = 0
        async with asyncio.timeout(MARGIN):
            while True:
                try:
                    chunk = await reader.read(1 << 20)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += len(chunk)
    finally:
        writer.close()
    assert received < 7_000_000  # cut off, not served in full
    assert await server.get("/health") == 200


async def test_a_scraper_leaving_mid_body_is_dropped_quietly(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    base = snapshot("dr", "g", 5)
    rows = tuple(base.rows[0]._replace(partition=i) for i in range(8000))
    server.sink.apply(dataclasses.replace(base, rows=rows))
    with structlog.testing.capture_logs() as logs, caplog.at_level(logging.DEBUG, "aiohttp"):
        reader, writer = await server.connect(rcvbuf=4096)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        await reader.readexactly(1000)
        writer.transport.abort()
        assert await server.get("/health") == 200
    assert logs == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_descriptor_exhaustion_is_one_line_and_frees_idle_connections(
    server: Server,
) -> None:
    loop = asyncio.get_running_loop()
    idle = [await server.connect() for _ in range(3)]
    await asyncio.sleep(0.1)
    exhausted = {
        "message": "socket.accept() out of system resource\nsocket: <...>",
        "exception": OSError(errno.EMFILE, "Too many open files"),
    }
    with structlog.testing.capture_logs() as logs:
        for _ in range(500):  # what asyncio reports during one burst of failed accepts
            loop.call_exception_handler(dict(exhausted))
    assert [entry["event"] for entry in logs] == ["resources_exhausted"]
    assert logs[0]["idle_connections_closed"] == 3
    assert logs[0]["suppressed"] == 0
    assert logs[0]["where"] == "socket.accept() out of system resource"
    for reader, writer in idle:
        await seconds_until_closed(reader, MARGIN)
        writer.close()
    assert await server.get("/health") == 200


async def test_other_loop_errors_still_reach_the_previous_handler() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        status = StatusBoard(
            ["dr"], staleness_threshold=90.0, poll_interval=30.0, clock=FakeClock(), identity=""
        )
        app = build_app(
            PrometheusSink("partition", status, SelfMetrics()),
            status,
            version="1",
            settings_view={},
        )
        running = await start_server(app, "127.0.0.1", 0, limits=LIMITS)
        other = {"message": "boom", "exception": ValueError("x")}
        loop.call_exception_handler(other)
        assert seen == [other]
        await running.cleanup()
        assert loop.get_exception_handler() is not None
        loop.call_exception_handler(other)
        assert seen == [other, other]
    finally:
        loop.set_exception_handler(None)


async def test_a_tls_client_that_never_handshakes_is_cut_after_the_header_timeout(
    tmp_path: Path,
) -> None:
    # Before the handshake the connection is asyncio's, invisible to aiohttp; asyncio's own
    # default handshake timeout is 60 s.
    cert, key = _server_files(generate_tls_files(tmp_path / "tls"), tmp_path)
    context = server_ssl_context(HttpSettings(tls_cert_file=cert, tls_key_file=key))
    status = StatusBoard(
        ["dr"], staleness_threshold=90.0, poll_interval=30.0, clock=FakeClock(), identity=""
    )
    app = build_app(
        PrometheusSink("partition", status, SelfMetrics()), status, version="1", settings_view={}
    )
    running = await start_server(app, "127.0.0.1", 0, ssl_context=context, limits=LIMITS)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        try:
            elapsed = await seconds_until_closed(reader, LIMITS.header_timeout + MARGIN)
        finally:
            writer.close()
        assert elapsed >= LIMITS.header_timeout - 0.1
    finally:
        await running.cleanup()
