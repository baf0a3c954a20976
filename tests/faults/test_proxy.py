"""The fault proxy itself, against a fake broker (no Kafka): each fault does what it says, the
proxy forwards faithfully when it behaves, and it stays on loopback and within its bounds."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultPlan, FaultProxy


def request(correlation: int, api_key: int = 16) -> bytes:
    payload = struct.pack(">hhih", api_key, 5, correlation, 1) + b"t"
    return struct.pack(">i", len(payload)) + payload


def response_body(correlation: int) -> bytes:
    return struct.pack(">i", correlation) + bytes(range(40))


@contextlib.asynccontextmanager
async def proxied(
    proxy: FaultProxy,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A fake broker answering every request with its correlation id and 40 known bytes, the
    proxy in front of it, and a client connection through the proxy."""

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                body = response_body(struct.unpack(">i", frame[4:8])[0])
                writer.write(struct.pack(">i", len(body)) + body)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    proxy.upstream = server.sockets[0].getsockname()[:2]
    host, port = await proxy.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await proxy.close()
        server.close()
        await server.wait_closed()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    async with asyncio.timeout(5):
        prefix = await reader.readexactly(4)
        size = struct.unpack(">i", prefix)[0]
        try:
            return size, await reader.readexactly(max(size, 0))
        except asyncio.IncompleteReadError as exc:
            raise asyncio.IncompleteReadError(prefix + exc.partial, None) from exc


async def exchange(
    proxy: FaultProxy, correlations: list[int]
) -> tuple[list[tuple[int, bytes]], bytes]:
    """Send pipelined requests; return the whole frames read and, when the connection ended
    part-way through a frame, the bytes of that frame that did arrive."""
    async with proxied(proxy) as (reader, writer):
        writer.write(b"".join(request(c) for c in correlations))
        await writer.drain()
        frames: list[tuple[int, bytes]] = []
        try:
            for _ in correlations:
                frames.append(await read_frame(reader))
        except asyncio.IncompleteReadError as exc:
            return frames, exc.partial
        return frames, b""


def fuzzing(kind: str) -> FaultProxy:
    proxy = FaultProxy(("127.0.0.1", 9), seed=1)
    proxy.fuzz(1.0, kinds=(kind,))
    return proxy


async def test_behaving_proxy_forwards_every_response_unchanged() -> None:
    proxy = FaultProxy(("127.0.0.1", 9))
    async with proxied(proxy) as (reader, writer):
        writer.write(request(1) + request(2))
        await writer.drain()
        assert [await read_frame(reader) for _ in range(2)] == [
            (44, response_body(1)),
            (44, response_body(2)),
        ]
    assert proxy.stats.responses == 2
    assert proxy.stats.total_faults == 0
    assert proxy.stats.responses_by_api == {"ListGroups": 2}


async def test_latency_delays_each_response() -> None:
    proxy = FaultProxy(("127.0.0.1", 9))
    proxy.slow(0.3)
    async with proxied(proxy) as (reader, writer):
        began = time.monotonic()
        writer.write(request(1))
        await writer.drain()
        assert await read_frame(reader) == (44, response_body(1))
        assert time.monotonic() - began >= 0.3


async def test_garble_keeps_frame_and_correlation_and_changes_the_body() -> None:
    [(size, body)], _ = await exchange(fuzzing("garble"), [7])
    assert size == 44
    assert body[:4] == struct.pack(">i", 7)
    assert body != response_body(7)


async def test_truncate_is_a_well_framed_short_answer() -> None:
    [(size, body)], _ = await exchange(fuzzing("truncate"), [7])
    assert 4 <= size < 44
    assert body == response_body(7)[:size]


async def test_cut_stops_mid_frame_and_closes() -> None:
    frames, rest = await exchange(fuzzing("cut"), [7, 8])
    assert frames == []
    assert 0 < len(rest) < 48


async def test_bad_length_lies_about_the_size() -> None:
    proxy = fuzzing("bad_length")
    async with proxied(proxy) as (reader, writer):
        writer.write(request(7))
        await writer.drain()
        async with asyncio.timeout(5):
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            body = await reader.readexactly(44)
    assert size != 44
    assert body == response_body(7)


@pytest.mark.parametrize("kind", ["swap", "reorder"])
async def test_swap_and_reorder_need_a_second_response_on_the_connection(kind: str) -> None:
    frames, _ = await exchange(fuzzing(kind), [1, 2])
    ids = [struct.unpack(">i", body[:4])[0] for _, body in frames]
    assert ids == [2, 1]
    if kind == "swap":  # bodies stay in place, only the ids move
        assert [body[4:] for _, body in frames] == [response_body(1)[4:], response_body(2)[4:]]


async def test_a_lone_response_held_for_a_swap_is_delivered_unchanged() -> None:
    proxy = fuzzing("swap")
    frames, _ = await exchange(proxy, [3])
    assert frames == [(44, response_body(3))]
    assert proxy.stats.total_faults == 0


async def test_faults_stop_at_max_faults_and_behave_stops_them() -> None:
    proxy = FaultProxy(("127.0.0.1", 9), seed=2, max_faults=1)
    proxy.fuzz(1.0, kinds=("garble",))
    frames, _ = await exchange(proxy, [1, 2, 3])
    assert [body == response_body(c) for (_, body), c in zip(frames, [1, 2, 3], strict=True)] == [
        False,
        True,
        True,
    ]
    proxy.behave()
    assert proxy.plan == FaultPlan()


async def test_only_loopback_and_known_kinds() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(("10.0.0.1", 9092))
    with pytest.raises(ValueError, match="fault kinds"):
        FaultPlan(fuzz_rate=0.5, kinds=("flip",))
