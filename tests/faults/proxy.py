"""A fault-injecting TCP proxy for the Kafka protocol (tests only, loopback only).

It sits where ``bench/proxy.py`` sits: in front of a broker listener that *advertises the
proxy's port* (``PlaintextListener(advertised_port=...)``), so every connection a client opens
after bootstrapping runs through it. Requests are forwarded untouched (their headers are read
to know which API each response answers); responses are read as whole frames and, according to
the :class:`FaultPlan` in force, delivered late and/or malformed:

- ``latency``: every response is delivered ``latency`` seconds after it arrived from the broker
  (order kept, pipelined responses keep overlapping: a slow broker, not a slow queue).
- ``fuzz_rate``: that fraction of responses (seeded, per connection) gets one fault of ``kinds``:

  ``garble``      the body after the correlation id is replaced by random bytes of its length
  ``truncate``    the body is cut short and the size prefix says so (a well-framed short answer)
  ``cut``         the frame stops part-way and the connection closes (the broker died mid-write)
  ``bad_length``  the size prefix lies (negative, shorter or longer than the body): the stream
                  desynchronises or the client waits for bytes that never come
  ``swap``        this response and the next one on the connection exchange correlation ids
  ``reorder``     this response is delivered after the next one on the connection

The plan is a plain mutable object: a test changes it at run time, :meth:`FaultProxy.behave`
makes the proxy forward faithfully again. Every fault is counted in ``stats`` by kind and API.
Bounded: at most ``max_faults`` faults in the proxy's life, frames over 64 MiB end the
connection, and every connection idle for ``idle_timeout`` is closed.

Not injected on purpose: a flipped bit *inside* a value (an offset, a partition index) that
leaves a well-formed message. Kafka responses carry no checksum outside record batches, so no
client can tell such an answer from a true one; TCP checksums and TLS are what stand against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from dataclasses import dataclass

from bench.proxy import (
    REQUEST_HEADER_BYTES,
    FrameError,
    FrameScanner,
    api_name,
    parse_request_header,
)
from tests.faults.frames import (
    API_VERSIONS_KEY,
    KINDS,
    MAX_FRAME_BYTES,
    FaultPlan,
    FaultStats,
    damage,
    invert_first_range,
    require_loopback,
)

HOLD_SECONDS = 0.5
"""How long ``swap``/``reorder`` wait for a next response before delivering the held one as is."""
_SIZE = struct.Struct(">i")


@dataclass(slots=True)
class _Response:
    arrived: float
    frame: bytes  # size prefix + body
    api_key: int


class FaultProxy:
    """Forwards connections to ``upstream`` and damages responses as ``plan`` says."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        seed: int = 0,
        max_faults: int = 100_000,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
    ) -> None:
        require_loopback(upstream[0])
        self.upstream = upstream
        self.plan = FaultPlan()
        self.stats = FaultStats()
        self.seed = seed
        self.max_faults = max_faults
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._close_after: dict[int, int] = {}
        self._invert_versions_until = 0.0
        self._invert_after_close = 0.0
        self._stall_next: set[int] = set()
        self._throttle_next: dict[int, tuple[int, int]] = {}
        self._throttle_every: dict[int, tuple[int, int]] = {}

    # -- control

    def behave(self) -> None:
        """Forward faithfully from now on (no latency, no faults)."""
        self.plan = FaultPlan()
        self._throttle_every.clear()

    def fuzz(
        self, rate: float, kinds: tuple[str, ...] = KINDS, apis: frozenset[int] | None = None
    ) -> None:
        self.plan = FaultPlan(latency=self.plan.latency, fuzz_rate=rate, kinds=kinds, apis=apis)

    def slow(self, latency: float) -> None:
        self.plan = FaultPlan(
            latency=latency,
            fuzz_rate=self.plan.fuzz_rate,
            kinds=self.plan.kinds,
            apis=self.plan.apis,
        )

    def close_after(self, api_key: int, count: int, *, invert_versions_for: float = 0.0) -> None:
        """One-shot: close the connection that delivers the ``count``-th next response to
        ``api_key`` (right after delivering it), as a broker restarting between two requests;
        then :meth:`invert_api_versions` for ``invert_versions_for`` seconds."""
        self._close_after[api_key] = count
        self._invert_after_close = invert_versions_for

    def stall_next(self, api_key: int) -> None:
        """One-shot: the next response to ``api_key`` claims 1 MiB more bytes than it has, so
        its connection hangs from then on without being closed."""
        self._stall_next.add(api_key)

    def throttle_next(self, api_key: int, throttle_ms: int, at: int) -> None:
        """One-shot: the next response to ``api_key`` gets ``throttle_ms`` written as its
        throttle time, an int32 at byte ``at`` of the frame (8 after a v0 response header, 9
        after a flexible v1 header with no tags)."""
        self._throttle_next[api_key] = (throttle_ms, at)

    def throttle_every(self, api_key: int, throttle_ms: int, at: int) -> None:
        """Until :meth:`behave`: every response to ``api_key`` gets ``throttle_ms`` as its
        throttle time (as :meth:`throttle_next` writes it), as under a client quota."""
        self._throttle_every[api_key] = (throttle_ms, at)

    def invert_api_versions(self, seconds: float) -> None:
        """For ``seconds``: the first response of every new connection, when it answers
        ApiVersions (aiokafka's own version lookup), is delivered with the first API's version
        range inverted (min > max): well-framed, well-formed, and wrong."""
        self._invert_versions_until = time.monotonic() + seconds

    # -- lifecycle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        require_loopback(host)
        self._server = await asyncio.start_server(self._accept, host, port)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    # -- one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # close() cancels handlers; asyncio's stream callback would log a cancelled
            # handler as an error, so it ends normally instead.
            return
        finally:
            self._handlers.discard(task)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except (OSError, TimeoutError):
            client_writer.close()
            return
        self.stats.connections += 1
        rng = random.Random(f"{self.seed}:{self.stats.connections}")
        apis: dict[int, int] = {}  # correlation id → api key, for requests in flight
        outbox: asyncio.Queue[_Response | None] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._requests(client_reader, up_writer, apis)),
            asyncio.create_task(self._responses(up_reader, outbox, apis)),
            asyncio.create_task(self._deliver(outbox, client_writer, rng)),
        ]
        try:
            # Any side closing (or a `cut`) ends the connection for both.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (client_writer, up_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        apis: dict[int, int],
    ) -> None:
        scanner = FrameScanner(REQUEST_HEADER_BYTES)
        while True:
            async with asyncio.timeout(self._idle_timeout):
                data = await reader.read(256 * 1024)
            if not data:
                return
            try:
                for frame in scanner.feed(data):
                    header = parse_request_header(frame.header)
                    apis[header.correlation_id] = header.api_key
            except FrameError:
                return
            writer.write(data)
            await writer.drain()

    async def _responses(
        self,
        reader: asyncio.StreamReader,
        outbox: asyncio.Queue[_Response | None],
        apis: dict[int, int],
    ) -> None:
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout):
                    prefix = await reader.readexactly(4)
                    (size,) = _SIZE.unpack(prefix)
                    if not 4 <= size <= MAX_FRAME_BYTES:
                        return
                    body = await reader.readexactly(size)
                (correlation,) = _SIZE.unpack_from(body)
                api_key = apis.pop(correlation, -1)
                self.stats.responses += 1
                self.stats.responses_by_api[api_name(api_key)] += 1
                outbox.put_nowait(_Response(time.monotonic(), prefix + body, api_key))
        except asyncio.IncompleteReadError:
            return
        finally:
            outbox.put_nowait(None)

    async def _deliver(
        self,
        outbox: asyncio.Queue[_Response | None],
        writer: asyncio.StreamWriter,
        rng: random.Random,
    ) -> None:
        first = True
        while True:
            item = await outbox.get()
            if item is None:
                return
            await self._wait_latency(item)
            if first and item.api_key == API_VERSIONS_KEY and self._inverting():
                item = _Response(item.arrived, invert_first_range(item.frame), item.api_key)
                self._count("inverted_versions", item)
            first = False
            if self._closing_after(item):
                writer.write(item.frame)
                await writer.drain()
                return
            rule = self._throttle_next.pop(item.api_key, None)
            if rule is not None or item.api_key in self._throttle_every:
                throttle_ms, at = rule or self._throttle_every[item.api_key]
                frame = bytearray(item.frame)
                _SIZE.pack_into(frame, at, throttle_ms)
                item = _Response(item.arrived, bytes(frame), item.api_key)
                self._count("throttle", item)
            if item.api_key in self._stall_next:
                # The size prefix promises 1 MiB more than follows: the client waits for bytes
                # that never come and the connection is silently stuck (a half-open socket).
                self._stall_next.discard(item.api_key)
                self._count("stall", item)
                writer.write(_SIZE.pack(len(item.frame) - 4 + (1 << 20)) + item.frame[4:])
                await writer.drain()
                continue
            kind = self._choose_fault(item, rng)
            if kind == "cut":
                self._count(kind, item)
                writer.write(item.frame[: rng.randrange(1, len(item.frame))])
                await writer.drain()
                return
            if kind in ("swap", "reorder"):
                if not await self._pair(kind, item, outbox, writer):
                    return
            else:
                writer.write(item.frame if kind is None else self._damage(kind, item, rng))
            await writer.drain()

    def _inverting(self) -> bool:
        return time.monotonic() < self._invert_versions_until

    def _closing_after(self, item: _Response) -> bool:
        left = self._close_after.get(item.api_key)
        if left is None:
            return False
        if left > 1:
            self._close_after[item.api_key] = left - 1
            return False
        del self._close_after[item.api_key]
        self._count("close_after", item)
        if self._invert_after_close:
            self.invert_api_versions(self._invert_after_close)
        return True

    async def _wait_latency(self, item: _Response) -> None:
        delay = item.arrived + self.plan.latency - time.monotonic()
        if delay > 0:
            self.stats.delayed_now += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.stats.delayed_now -= 1

    def _choose_fault(self, item: _Response, rng: random.Random) -> str | None:
        plan = self.plan
        if plan.fuzz_rate <= 0 or self.stats.total_faults >= self.max_faults:
            return None
        if plan.apis is not None and item.api_key not in plan.apis:
            return None
        if rng.random() >= plan.fuzz_rate:
            return None
        return rng.choice(plan.kinds)

    def _count(self, kind: str, item: _Response) -> None:
        self.stats.faults[kind] += 1
        self.stats.by_api[(kind, api_name(item.api_key))] += 1

    def _damage(self, kind: str, item: _Response, rng: random.Random) -> bytes:
        self._count(kind, item)
        return damage(kind, item.frame, rng)

    async def _pair(
        self,
        kind: str,
        held: _Response,
        outbox: asyncio.Queue[_Response | None],
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Deliver ``held`` and the next response swapped or reordered; False when the broker
        side closed meanwhile (the connection ends after ``held`` is delivered)."""
        try:
            async with asyncio.timeout(HOLD_SECONDS):
                following = await outbox.get()
        except TimeoutError:
            # Nothing else in flight on this connection: delivered as is, not counted.
            writer.write(held.frame)
            return True
        if following is None:
            writer.write(held.frame)
            await writer.drain()
            return False
        self._count(kind, held)
        if kind == "reorder":
            writer.write(following.frame + held.frame)
        else:
            first = held.frame[:4] + following.frame[4:8] + held.frame[8:]
            second = following.frame[:4] + held.frame[4:8] + following.frame[8:]
            writer.write(first + second)
        return True
