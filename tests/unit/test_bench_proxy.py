"""The benchmark proxy's Kafka frame parsing and counting (no Kafka, no benchmark run)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from bench.proxy import (
    REQUEST_HEADER_BYTES,
    RESPONSE_HEADER_BYTES,
    ConnectionCounter,
    CountingProxy,
    FrameError,
    FrameScanner,
    RequestHeader,
    TrafficStats,
    api_name,
)


def request_frame(api_key: int, version: int, correlation: int, body: bytes = b"") -> bytes:
    # Header v1: api_key, api_version, correlation_id, client_id (int16 length + bytes).
    header = struct.pack(">hhih", api_key, version, correlation, 5) + b"bench"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def response_frame(correlation: int, body: bytes = b"") -> bytes:
    payload = struct.pack(">i", correlation) + body
    return struct.pack(">i", len(payload)) + payload


def test_scanner_finds_frames_split_at_every_byte() -> None:
    stream = request_frame(1, 17, 7, b"x" * 300) + request_frame(3, 12, 8)
    scanner = FrameScanner(REQUEST_HEADER_BYTES)
    frames = []
    for i in range(len(stream)):
        frames += scanner.feed(stream[i : i + 1])
    assert [f.wire_bytes for f in frames] == [4 + 8 + 2 + 5 + 300, 4 + 8 + 2 + 5]
    assert [f.header[:2] for f in frames] == [b"\x00\x01", b"\x00\x03"]
    assert scanner.idle


def test_scanner_handles_many_frames_in_one_chunk_and_a_partial_tail() -> None:
    whole = response_frame(1, b"a" * 10) + response_frame(2)
    tail = response_frame(3, b"b" * 1000)
    scanner = FrameScanner(RESPONSE_HEADER_BYTES)
    frames = scanner.feed(whole + tail[:6])
    assert [f.header for f in frames] == [struct.pack(">i", 1), struct.pack(">i", 2)]
    assert not scanner.idle
    [last] = scanner.feed(tail[6:20])
    assert (last.header, last.wire_bytes) == (struct.pack(">i", 3), len(tail))
    assert not scanner.idle
    assert scanner.feed(tail[20:]) == []
    assert scanner.idle


def test_scanner_rejects_a_stream_that_is_not_kafka() -> None:
    scanner = FrameScanner(REQUEST_HEADER_BYTES)
    with pytest.raises(FrameError):
        # A TLS ClientHello: record type 0x16, version 0x0301, ... → an absurd frame size.
        scanner.feed(bytes.fromhex("160301020001000200000000"))


def test_scanner_peeking_past_the_header_still_frames_shorter_responses() -> None:
    # A Heartbeat v0 answer is 6 bytes: shorter than a 9-byte peek, but still a frame.
    short = response_frame(5, b"\x00\x00")
    long = response_frame(6, b"\x00\x00\x03\xe8" + b"z" * 100)
    stream = short + long + short
    scanner = FrameScanner(9, min_size=RESPONSE_HEADER_BYTES)
    frames = []
    for i in range(len(stream)):
        frames += scanner.feed(stream[i : i + 1])
    assert [(f.wire_bytes, f.header) for f in frames] == [
        (len(short), short[4:]),
        (len(long), long[4:13]),
        (len(short), short[4:]),
    ]
    assert scanner.idle
    with pytest.raises(FrameError):
        FrameScanner(9, min_size=RESPONSE_HEADER_BYTES).feed(struct.pack(">i", 3) + b"abc")


def test_stats_see_the_peeked_response_bytes() -> None:
    heads: list[bytes] = []

    class Peeking(TrafficStats):
        def response(
            self, header: RequestHeader, wire_bytes: int, latency: float, head: bytes = b""
        ) -> None:
            super().response(header, wire_bytes, latency, head)
            heads.append(head)

    stats = Peeking()
    counter = ConnectionCounter(stats, response_header_bytes=8)
    counter.client_bytes(request_frame(16, 4, 1) + request_frame(12, 0, 2), now=0.0)
    counter.broker_bytes(response_frame(1, b"\x00\x00\x00\x07rest") + response_frame(2), now=1.0)
    assert heads == [struct.pack(">ii", 1, 7), struct.pack(">i", 2)]
    assert stats.unparsable_streams == 0


def test_counter_maps_responses_to_requests_by_correlation_id() -> None:
    stats = TrafficStats()
    counter = ConnectionCounter(stats)
    counter.client_bytes(request_frame(2, 9, 100) + request_frame(2, 9, 101), now=1.0)
    counter.client_bytes(request_frame(1, 17, 102, b"z" * 50), now=1.5)
    # Out of order on purpose: the mapping must not assume FIFO.
    counter.broker_bytes(response_frame(102, b"r" * 4000) + response_frame(100), now=2.0)
    counter.broker_bytes(response_frame(101, b"q") + response_frame(999), now=3.0)

    snapshot = {(a["api"], a["version"]): a for a in stats.snapshot()["apis"]}
    list_offsets = snapshot[("ListOffsets", 9)]
    assert list_offsets["requests"] == 2
    assert list_offsets["request_bytes"] == 2 * (4 + 15)
    assert list_offsets["responses"] == 2
    assert list_offsets["response_bytes"] == (4 + 4) + (4 + 4 + 1)
    assert list_offsets["latency_seconds"] == pytest.approx(1.0 + 2.0)
    fetch = snapshot[("Fetch", 17)]
    assert (fetch["requests"], fetch["responses"]) == (1, 1)
    assert fetch["response_bytes"] == 4 + 4 + 4000
    assert fetch["max_latency_seconds"] == pytest.approx(0.5)
    assert stats.unmatched_responses == 1


def test_counter_stops_counting_a_stream_it_cannot_parse() -> None:
    stats = TrafficStats()
    counter = ConnectionCounter(stats)
    counter.client_bytes(b"\x7f\xff\xff\xff" + b"\x00" * 8, now=0.0)
    counter.client_bytes(request_frame(3, 12, 1), now=0.0)
    assert stats.unparsable_streams == 1
    assert stats.apis == {}


def test_api_names_follow_kafka_api_keys() -> None:
    assert [api_name(k) for k in (0, 1, 2, 3, 9, 15, 16, 18, 32, 69)] == [
        "Produce",
        "Fetch",
        "ListOffsets",
        "Metadata",
        "OffsetFetch",
        "DescribeGroups",
        "ListGroups",
        "ApiVersions",
        "DescribeConfigs",
        "ConsumerGroupDescribe",
    ]
    assert api_name(4242) == "api4242"


async def test_proxy_forwards_bytes_unchanged_and_counts_both_directions() -> None:
    async def fake_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers every request with a response carrying its correlation id and 1,000 bytes.
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                correlation = struct.unpack(">i", frame[4:8])[0]
                writer.write(response_frame(correlation, bytes(1000)))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    broker = await asyncio.start_server(fake_broker, "127.0.0.1", 0)
    proxy = CountingProxy(broker.sockets[0].getsockname()[:2])
    host, port = await proxy.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(host, port)
        sent = [request_frame(16, 5, c, b"p" * c) for c in range(1, 6)]
        writer.write(b"".join(sent))
        await writer.drain()
        async with asyncio.timeout(10):
            replies = [await reader.readexactly(4 + 4 + 1000) for _ in sent]
        assert [struct.unpack(">i", r[4:8])[0] for r in replies] == [1, 2, 3, 4, 5]
        # The proxy counts a chunk before forwarding it: every reply received is counted.
        [entry] = proxy.stats.snapshot()["apis"]
        assert (entry["api"], entry["version"]) == ("ListGroups", 5)
        assert entry["requests"] == entry["responses"] == 5
        assert entry["request_bytes"] == sum(len(s) for s in sent)
        assert entry["response_bytes"] == 5 * 1008
        assert proxy.stats.connections_opened == 1
        writer.close()
        await writer.wait_closed()
    finally:
        await proxy.close()
        broker.close()
        await broker.wait_closed()


async def test_proxy_refuses_non_loopback_addresses() -> None:
    proxy = CountingProxy(("10.1.2.3", 9092))
    with pytest.raises(ValueError, match="loopback"):
        await proxy.start("127.0.0.1", 0)
