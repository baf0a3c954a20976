"""A request-counting TCP proxy for the Kafka protocol.

Placed between any Kafka client (ours or another exporter) and a broker whose listener
*advertises the proxy's address*, so every connection the client opens after bootstrapping runs
through it. Bytes are forwarded untouched; the proxy only reads frame boundaries: the 4-byte size,
then the request header's ``api_key``, ``api_version`` and ``correlation_id`` (the first 8 bytes
of every request header version), and the response's ``correlation_id`` (the first 4 bytes of
both response header versions), which maps a response back to its request for its size and
latency. Payloads are never buffered whole, decoded or stored.

Run alone::

    python -m bench.proxy --listen 127.0.0.1:9100 --upstream 127.0.0.1:9092

It prints one JSON line ``{"listen": ..., "control": ...}`` when ready; ``GET /stats`` on the
control address returns the cumulative counters as JSON (see :meth:`TrafficStats.snapshot`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_NAMES: dict[int, str] = dict(
    enumerate(
        [
            "Produce",
            "Fetch",
            "ListOffsets",
            "Metadata",
            "LeaderAndIsr",
            "StopReplica",
            "UpdateMetadata",
            "ControlledShutdown",
            "OffsetCommit",
            "OffsetFetch",
            "FindCoordinator",
            "JoinGroup",
            "Heartbeat",
            "LeaveGroup",
            "SyncGroup",
            "DescribeGroups",
            "ListGroups",
            "SaslHandshake",
            "ApiVersions",
            "CreateTopics",
            "DeleteTopics",
            "DeleteRecords",
            "InitProducerId",
            "OffsetForLeaderEpoch",
            "AddPartitionsToTxn",
            "AddOffsetsToTxn",
            "EndTxn",
            "WriteTxnMarkers",
            "TxnOffsetCommit",
            "DescribeAcls",
            "CreateAcls",
            "DeleteAcls",
            "DescribeConfigs",
            "AlterConfigs",
            "AlterReplicaLogDirs",
            "DescribeLogDirs",
            "SaslAuthenticate",
            "CreatePartitions",
            "CreateDelegationToken",
            "RenewDelegationToken",
            "ExpireDelegationToken",
            "DescribeDelegationToken",
            "DeleteGroups",
            "ElectLeaders",
            "IncrementalAlterConfigs",
            "AlterPartitionReassignments",
            "ListPartitionReassignments",
            "OffsetDelete",
            "DescribeClientQuotas",
            "AlterClientQuotas",
            "DescribeUserScramCredentials",
            "AlterUserScramCredentials",
            "Vote",
            "BeginQuorumEpoch",
            "EndQuorumEpoch",
            "DescribeQuorum",
            "AlterPartition",
            "UpdateFeatures",
            "Envelope",
            "FetchSnapshot",
            "DescribeCluster",
            "DescribeProducers",
            "BrokerRegistration",
            "BrokerHeartbeat",
            "UnregisterBroker",
            "DescribeTransactions",
            "ListTransactions",
            "AllocateProducerIds",
            "ConsumerGroupHeartbeat",
            "ConsumerGroupDescribe",
            "ControllerRegistration",
            "GetTelemetrySubscriptions",
            "PushTelemetry",
            "AssignReplicasToDirs",
            "ListConfigResources",
            "DescribeTopicPartitions",
            "ShareGroupHeartbeat",
            "ShareGroupDescribe",
            "ShareFetch",
            "ShareAcknowledge",
            "AddRaftVoter",
            "RemoveRaftVoter",
            "UpdateRaftVoter",
            "InitializeShareGroupState",
            "ReadShareGroupState",
            "WriteShareGroupState",
            "DeleteShareGroupState",
            "ReadShareGroupStateSummary",
            "StreamsGroupHeartbeat",
            "StreamsGroupDescribe",
            "DescribeShareGroupOffsets",
            "AlterShareGroupOffsets",
            "DeleteShareGroupOffsets",
        ]
    )
)
"""Kafka API key → name (Kafka 4.1's ``ApiKeys``); unknown keys are reported as ``api<key>``."""

REQUEST_HEADER_BYTES = 8
"""api_key (int16), api_version (int16), correlation_id (int32): common to header v0–v2."""

RESPONSE_HEADER_BYTES = 4
"""correlation_id (int32): common to response header v0 and v1."""

MAX_FRAME_BYTES = 256 * 1024 * 1024
"""Larger sizes mean the stream is not Kafka: stop counting rather than guess. (Brokers cap
requests at ``socket.request.max.bytes``, 100 MiB by default; a TLS record read as a size is
0x1603.... ≈ 369 MB.)"""

IDLE_TIMEOUT_SECONDS = 900.0
"""A connection with no traffic either way for this long is closed (bounds every pump loop)."""

READ_CHUNK = 256 * 1024


def api_name(api_key: int) -> str:
    return API_NAMES.get(api_key, f"api{api_key}")


class FrameError(ValueError):
    """The byte stream is not a sequence of Kafka frames."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame's total size on the wire (including the 4-byte size) and its header bytes."""

    wire_bytes: int
    header: bytes


class FrameScanner:
    """Finds Kafka frame boundaries in a byte stream without buffering frame bodies.

    ``feed`` takes bytes as they arrive, in chunks of any size, and returns the frames whose
    first ``header_bytes`` after the size field (or the whole frame, when it is shorter but at
    least ``min_size`` bytes) have now been seen. Only the size field and the header are ever
    copied; the rest of a frame is skipped by counting.
    """

    def __init__(self, header_bytes: int, *, min_size: int | None = None) -> None:
        self._header_bytes = header_bytes
        self._min_size = header_bytes if min_size is None else min_size
        self._pending = bytearray()
        self._size: int | None = None
        self._skip = 0

    @property
    def idle(self) -> bool:
        """True between frames (nothing of a started frame is outstanding)."""
        return self._skip == 0 and not self._pending and self._size is None

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        position = 0
        end = len(data)
        while position < end:
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                continue
            if self._size is None:
                take = min(4 - len(self._pending), end - position)
                self._pending += data[position : position + take]
                position += take
                if len(self._pending) < 4:
                    break
                size = int.from_bytes(self._pending, "big", signed=True)
                if size < self._min_size or size > MAX_FRAME_BYTES:
                    raise FrameError(f"frame size {size} is not a Kafka frame")
                self._size = size
                self._pending.clear()
            wanted = min(self._header_bytes, self._size)
            take = min(wanted - len(self._pending), end - position)
            self._pending += data[position : position + take]
            position += take
            if len(self._pending) < wanted:
                break
            frames.append(Frame(self._size + 4, bytes(self._pending)))
            self._skip = self._size - wanted
            self._size = None
            self._pending.clear()
        return frames


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int


def parse_request_header(header: bytes) -> RequestHeader:
    return RequestHeader(
        int.from_bytes(header[0:2], "big", signed=True),
        int.from_bytes(header[2:4], "big", signed=True),
        int.from_bytes(header[4:8], "big", signed=True),
    )


def parse_response_correlation(header: bytes) -> int:
    return int.from_bytes(header[0:4], "big", signed=True)


@dataclass(slots=True)
class ApiCounters:
    requests: int = 0
    request_bytes: int = 0
    responses: int = 0
    response_bytes: int = 0
    latency_seconds: float = 0.0
    max_latency_seconds: float = 0.0


@dataclass(slots=True)
class TrafficStats:
    """Cumulative counters by (api_key, api_version); a reader takes deltas of snapshots."""

    apis: dict[tuple[int, int], ApiCounters] = field(default_factory=dict)
    connections_opened: int = 0
    connections_open: int = 0
    upstream_failures: int = 0
    unmatched_responses: int = 0
    unparsable_streams: int = 0

    def _counters(self, api_key: int, api_version: int) -> ApiCounters:
        counters = self.apis.get((api_key, api_version))
        if counters is None:
            counters = self.apis[(api_key, api_version)] = ApiCounters()
        return counters

    def request(self, header: RequestHeader, wire_bytes: int) -> None:
        counters = self._counters(header.api_key, header.api_version)
        counters.requests += 1
        counters.request_bytes += wire_bytes

    def response(
        self, header: RequestHeader, wire_bytes: int, latency: float, head: bytes = b""
    ) -> None:
        """``head``: the response's first bytes after the size (correlation id, then as much of
        the body as the connection peeks at; see ``response_header_bytes``)."""
        counters = self._counters(header.api_key, header.api_version)
        counters.responses += 1
        counters.response_bytes += wire_bytes
        counters.latency_seconds += latency
        counters.max_latency_seconds = max(counters.max_latency_seconds, latency)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready counters: ``apis`` is a list of one entry per (api, version)."""
        return {
            "taken_at_unix": time.time(),
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
            "upstream_failures": self.upstream_failures,
            "unmatched_responses": self.unmatched_responses,
            "unparsable_streams": self.unparsable_streams,
            "apis": [
                {
                    "api_key": key,
                    "api": api_name(key),
                    "version": version,
                    "requests": c.requests,
                    "request_bytes": c.request_bytes,
                    "responses": c.responses,
                    "response_bytes": c.response_bytes,
                    "latency_seconds": round(c.latency_seconds, 6),
                    "max_latency_seconds": round(c.max_latency_seconds, 6),
                }
                for (key, version), c in sorted(self.apis.items())
            ],
        }


class ConnectionCounter:
    """Counts one client connection's frames in both directions (correlation ids are unique
    per connection, so the in-flight map is per connection)."""

    def __init__(
        self, stats: TrafficStats, *, response_header_bytes: int = RESPONSE_HEADER_BYTES
    ) -> None:
        self._stats = stats
        self._requests = FrameScanner(REQUEST_HEADER_BYTES)
        # Peeking further than the correlation id (e.g. at throttle_time_ms) is for a
        # TrafficStats subclass; a shorter response is still a frame.
        self._responses = FrameScanner(
            max(RESPONSE_HEADER_BYTES, response_header_bytes), min_size=RESPONSE_HEADER_BYTES
        )
        self._in_flight: dict[int, tuple[RequestHeader, float]] = {}
        self._broken = False

    def client_bytes(self, data: bytes, now: float) -> None:
        if self._broken:
            return
        try:
            frames = self._requests.feed(data)
        except FrameError:
            self._give_up()
            return
        for frame in frames:
            header = parse_request_header(frame.header)
            self._stats.request(header, frame.wire_bytes)
            self._in_flight[header.correlation_id] = (header, now)

    def broker_bytes(self, data: bytes, now: float) -> None:
        if self._broken:
            return
        try:
            frames = self._responses.feed(data)
        except FrameError:
            self._give_up()
            return
        for frame in frames:
            request = self._in_flight.pop(parse_response_correlation(frame.header), None)
            if request is None:
                self._stats.unmatched_responses += 1
                continue
            header, sent = request
            self._stats.response(header, frame.wire_bytes, now - sent, frame.header)

    def _give_up(self) -> None:
        # Still forward the bytes (the client decides what the stream is), just stop counting.
        self._broken = True
        self._stats.unparsable_streams += 1


class CountingProxy:
    """Forwards every accepted connection to ``upstream`` and counts its Kafka frames."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        connect_timeout: float = 10.0,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        stats: TrafficStats | None = None,
        response_header_bytes: int = RESPONSE_HEADER_BYTES,
    ) -> None:
        """``stats``: a :class:`TrafficStats` (subclass) to count into; ``response_header_bytes``:
        how many bytes of each response it gets to see (see :meth:`TrafficStats.response`)."""
        self.upstream = upstream
        self.stats = stats if stats is not None else TrafficStats()
        self._response_header_bytes = response_header_bytes
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0 = any free port); returns the bound address."""
        _require_loopback(host)
        _require_loopback(self.upstream[0])
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        stats = self.stats
        try:
            async with asyncio.timeout(self._connect_timeout):
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except (OSError, TimeoutError):
            stats.upstream_failures += 1
            client_writer.close()
            return
        stats.connections_opened += 1
        stats.connections_open += 1
        counter = ConnectionCounter(stats, response_header_bytes=self._response_header_bytes)
        try:
            pumps = [
                asyncio.create_task(
                    self._pump(client_reader, upstream_writer, counter.client_bytes)
                ),
                asyncio.create_task(
                    self._pump(upstream_reader, client_writer, counter.broker_bytes)
                ),
            ]
            try:
                # Either side closing (or going idle) ends the connection for both.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            stats.connections_open -= 1
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        count: Callable[[bytes, float], None],
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    data = await reader.read(READ_CHUNK)
            except (TimeoutError, OSError):
                return
            if not data:
                return
            count(data, time.monotonic())
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                return


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{host!r} is not a loopback address: the proxy is for local benchmarks")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _control_app(proxy: CountingProxy) -> web.Application:
    async def stats(_: web.Request) -> web.Response:
        return web.json_response(proxy.stats.snapshot())

    app = web.Application()
    app.router.add_get("/stats", stats)
    return app


async def _main(args: argparse.Namespace) -> None:
    proxy = CountingProxy(args.upstream)
    listen = await proxy.start(*args.listen)
    _require_loopback(args.control[0])
    runner = web.AppRunner(_control_app(proxy), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.control[0], args.control[1])
    await site.start()
    control = runner.addresses[0]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(
        json.dumps({"listen": f"{listen[0]}:{listen[1]}", "control": f"{control[0]}:{control[1]}"}),
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await proxy.close()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--upstream", type=_address, required=True, help="broker HOST:PORT")
    parser.add_argument(
        "--control", type=_address, default=("127.0.0.1", 0), help="HOST:PORT of GET /stats"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except ValueError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
